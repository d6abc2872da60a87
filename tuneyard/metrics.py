"""Metrics helpers shared by the services."""

import threading

BASE_LABEL = "(base)"
OTHER_LABEL = "other"


class AdapterLabels:
    """The `adapter` label value of a request: the adapter's name (no version), "(base)"
    for the base model. The first `limit` names seen keep their own value; later ones share
    "other", so an unbounded number of adapters cannot blow up the series count."""

    def __init__(self, limit: int):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, adapter_id: str) -> str:
        name = adapter_id.partition("@")[0]
        if not name:
            return BASE_LABEL
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < self.limit:
                self._seen.add(name)
                return name
        return OTHER_LABEL
