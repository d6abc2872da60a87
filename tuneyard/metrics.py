"""Metrics helpers shared by the services."""

import threading

from tuneyard.adapter_store import AdapterId

BASE_LABEL = "(base)"
OTHER_LABEL = "other"


class BoundedLabels:
    """A label's values: the first `limit` seen keep their own; later ones share "other",
    so an unbounded number of names cannot blow up the series count."""

    def __init__(self, limit: int):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER_LABEL


class AdapterLabels(BoundedLabels):
    """The `adapter` label value of a request: the adapter's name (no version), "(base)"
    for the base model."""

    def __call__(self, adapter_id: str) -> str:
        name = AdapterId.name_of(adapter_id)
        return super().__call__(name) if name else BASE_LABEL
