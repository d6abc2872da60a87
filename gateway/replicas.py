"""The inference replicas behind the gateway, one channel each, and which one serves a call.

A generation call goes, among the replicas not marked down, to one that has its adapter
loaded (known from a `ListAdapters` poll every `replica_refresh_s`, and from what this
gateway sent there since), unless that one has more than `replica_affinity_slack` calls
in flight beyond the least busy replica; otherwise to the least busy one. An adapter then
stays on the replicas that serve it instead of being loaded (and evicted) everywhere.

A call that fails with UNAVAILABLE before anything was streamed marks its replica down
for a moment and is tried once more on another replica. With one fixed replica there is
nothing to poll and the choice is immediate.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from gateway.errors import BackendError
from gateway.settings import GatewaySettings
from tuneyard.adapter_store import AdapterId
from tuneyard.errors import Unavailable
from tuneyard.replicas import ReplicaAddresses
from tuneyard.v1 import inference_pb2

if TYPE_CHECKING:
    from gateway.backends import Backend
    from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class Replica:
    def __init__(self, backend: "Backend"):
        self.backend = backend
        self.addr: str = backend.addr
        self.in_flight = 0
        # Adapter ids ("name@version", and "name" when that is the newest version) loaded.
        self.loaded: set[str] = set()
        self.down_until = 0.0

    def is_down(self, now: float) -> bool:
        return self.down_until > now


def loaded_ids(adapters) -> set[str]:
    """The ids a request may name for the loaded ones among `adapters` (a ListAdapters
    reply): each `name@version`, and `name` alone when it is the newest version."""
    newest: dict[str, int] = {}
    for adapter in adapters:
        newest[adapter.name] = max(newest.get(adapter.name, 0), int(adapter.version or 0))
    ids = set()
    for adapter in adapters:
        if adapter.loaded:
            ids.add(adapter.id)
            if int(adapter.version or 0) == newest[adapter.name]:
                ids.add(adapter.name)
    return ids


def _unavailable(err: BaseException) -> bool:
    return isinstance(err, BackendError) and err.code == "UNAVAILABLE"


class ReplicaPool:
    """The inference service's replicas behind the interface of one backend (`call`,
    `stream`, `serving`), plus the adapter calls that concern every replica."""

    def __init__(
        self,
        settings: GatewaySettings,
        connect: Callable[[str], "Backend"],
        metrics: "GatewayMetrics | None" = None,
    ):
        self.addresses = ReplicaAddresses(settings.inference_addr)
        self.refresh_s = settings.replica_refresh_s
        self.slack = settings.replica_affinity_slack
        # A channel needs up to this long to find a restarted replica again anyway.
        self.down_s = settings.reconnect_backoff_max_s
        self.poll_timeout_s = settings.connect_timeout_s
        self._connect = connect
        self._metrics = metrics
        self.replicas: list[Replica] = []
        self._retired: list[Replica] = []
        self._turn = 0
        self._task: asyncio.Task | None = None
        self._sync(self.addresses.current)

    # --- membership ---------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve a `dns:///` name once before serving, then keep the set and the loaded
        adapters fresh in the background (only when there is something to follow)."""
        if self.addresses.dynamic:
            self._sync(await asyncio.to_thread(self.addresses.refresh))
        if self.addresses.dynamic or len(self.replicas) > 1:
            self._task = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # one bad round must not end the refreshing
                log.exception("refreshing the inference replicas failed")
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        """Follow DNS, learn what each replica has loaded, and find downed replicas up."""
        if self.addresses.dynamic:
            self._sync(await asyncio.to_thread(self.addresses.refresh))
        if len(self.replicas) > 1:
            await asyncio.gather(*(self._poll(replica) for replica in self.replicas))
        await self._close_retired()
        self._publish()

    async def _poll(self, replica: Replica) -> None:
        before = set(replica.loaded)
        try:
            reply = await replica.backend.call(
                "ListAdapters", inference_pb2.ListAdaptersRequest(), self.poll_timeout_s
            )
        except BackendError as err:
            if _unavailable(err):
                self._mark_down(replica)
            return
        replica.down_until = 0.0
        # What calls loaded there while the poll was on its way is not in its answer.
        replica.loaded = loaded_ids(reply.adapters) | (replica.loaded - before)

    def _sync(self, addrs: list[str]) -> None:
        known = {replica.addr: replica for replica in self.replicas}
        if list(known) == addrs:
            return
        self.replicas = [known.pop(addr, None) or Replica(self._connect(addr)) for addr in addrs]
        # Gone replicas keep their channel until their calls in flight have ended.
        for replica in known.values():
            self._retired.append(replica)
            if self._metrics is not None:
                with contextlib.suppress(KeyError):
                    self._metrics.replica_requests.remove(replica.addr)
        self._publish()

    async def _close_retired(self) -> None:
        for replica in [r for r in self._retired if r.in_flight == 0]:
            self._retired.remove(replica)
            await replica.backend.close()

    def _mark_down(self, replica: Replica) -> None:
        if not replica.is_down(time.monotonic()):
            log.warning("inference replica %s is unavailable", replica.addr)
        replica.down_until = time.monotonic() + self.down_s
        self._publish()

    def _publish(self) -> None:
        if self._metrics is None:
            return
        now = time.monotonic()
        self._metrics.replicas_known.set(len(self.replicas))
        self._metrics.replicas_up.set(sum(not r.is_down(now) for r in self.replicas))

    # --- choice -------------------------------------------------------------------------
    def pick(self, adapter: str = "", exclude: Replica | None = None) -> Replica:
        """The replica for a call with this adapter ("" for the base model)."""
        if len(self.replicas) == 1 and exclude is None:
            return self.replicas[0]
        # Rotating the starting point spreads ties (an idle pool) over every replica.
        self._turn += 1
        start = self._turn % max(len(self.replicas), 1)
        order = self.replicas[start:] + self.replicas[:start]
        candidates = [r for r in order if r is not exclude]
        if not candidates:
            raise Unavailable(f"no inference replica known for {self.addresses.spec}")
        now = time.monotonic()
        # When every replica is marked down, try them anyway: one may be back.
        live = [r for r in candidates if not r.is_down(now)] or candidates
        least = min(live, key=lambda r: r.in_flight)
        if adapter:
            warm = [r for r in live if adapter in r.loaded]
            if warm:
                best = min(warm, key=lambda r: r.in_flight)
                if best.in_flight - least.in_flight <= self.slack:
                    return best
        return least

    def _retry_target(self, err: BackendError, failed: Replica, adapter: str) -> Replica | None:
        if not _unavailable(err) or len(self.replicas) < 2:
            return None
        return self.pick(adapter, exclude=failed)

    def _started(self, replica: Replica) -> None:
        replica.in_flight += 1
        if self._metrics is not None:
            self._metrics.replica_requests.labels(replica.addr).inc()

    def _ended(self, replica: Replica) -> None:
        replica.in_flight -= 1

    # --- one backend's interface --------------------------------------------------------
    async def call(self, method: str, request, timeout_s: float | None = None, adapter: str = ""):
        return await self._with_retry(
            adapter, lambda replica: self._call_on(replica, method, request, timeout_s, adapter)
        )

    async def _call_on(self, replica: Replica, method: str, request, timeout_s, adapter: str):
        self._started(replica)
        try:
            reply = await replica.backend.call(method, request, timeout_s)
        except BackendError as err:
            if _unavailable(err):
                self._mark_down(replica)
            raise
        finally:
            self._ended(replica)
        if adapter:
            replica.loaded.add(adapter)
        return reply

    async def stream(
        self, method: str, request, timeout_s: float | None = None, adapter: str = ""
    ) -> AsyncIterator:
        """A server stream whose first message has come (see `Backend.stream`); a replica
        that is unavailable before that is left for another."""
        return await self._with_retry(
            adapter, lambda replica: self._stream_on(replica, method, request, timeout_s, adapter)
        )

    async def _with_retry(self, adapter: str, attempt):
        """`attempt(replica)` on the chosen replica, and once more on another one when the
        first was unavailable."""
        replica = self.pick(adapter)
        try:
            return await attempt(replica)
        except BackendError as err:
            other = self._retry_target(err, replica, adapter)
            if other is None:
                raise
            return await attempt(other)

    async def _stream_on(self, replica: Replica, method: str, request, timeout_s, adapter: str):
        self._started(replica)
        try:
            messages = await replica.backend.stream(
                method, request, timeout_s, on_done=lambda: self._ended(replica)
            )
        except BackendError as err:
            if _unavailable(err):
                self._mark_down(replica)
            raise
        if adapter:
            replica.loaded.add(adapter)
        return messages

    async def serving(self) -> bool:
        """True when at least one replica serves."""
        answers = await asyncio.gather(*(r.backend.serving() for r in self.replicas))
        return any(answers)

    # --- calls for every replica --------------------------------------------------------
    async def on_every_replica(self, method: str, request) -> list[tuple[Replica, object]]:
        """The call on every replica at once, with the replicas that answered. Unavailable
        ones are left out (a replica that comes back lists and loads adapters itself); any
        other error, or no replica answering, is raised."""
        replicas = list(self.replicas)
        if not replicas:
            raise Unavailable(f"no inference replica known for {self.addresses.spec}")
        results = await asyncio.gather(
            *(self._call_on(r, method, request, None, "") for r in replicas),
            return_exceptions=True,
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        for err in errors:
            if not _unavailable(err):
                raise err
        if len(errors) == len(results):
            raise errors[0]
        return [
            (replica, result)
            for replica, result in zip(replicas, results, strict=True)
            if not isinstance(result, BaseException)
        ]

    async def list_adapters(self) -> list[tuple[inference_pb2.Adapter, list[str]]]:
        """Every adapter once, `loaded` if loaded on any replica, with those replicas."""
        merged: dict[str, inference_pb2.Adapter] = {}
        where: dict[str, list[str]] = {}
        for replica, reply in await self.on_every_replica(
            "ListAdapters", inference_pb2.ListAdaptersRequest()
        ):
            replica.loaded = loaded_ids(reply.adapters)
            for adapter in reply.adapters:
                seen = merged.get(adapter.id)
                if seen is None or (adapter.loaded and not seen.loaded):
                    merged[adapter.id] = adapter
                if seen is not None:
                    merged[adapter.id].last_used_at = max(seen.last_used_at, adapter.last_used_at)
                if adapter.loaded:
                    where.setdefault(adapter.id, []).append(replica.addr)
        return [(adapter, where.get(adapter_id, [])) for adapter_id, adapter in merged.items()]

    async def load_adapter(self, adapter_id: str) -> inference_pb2.Adapter:
        """Load on every replica; the first answer describes the adapter."""
        answered = await self.on_every_replica(
            "LoadAdapter", inference_pb2.LoadAdapterRequest(adapter_id=adapter_id)
        )
        for replica, adapter in answered:
            replica.loaded |= {adapter_id, adapter.id}
        return answered[0][1]

    async def unload_adapter(self, adapter_id: str) -> inference_pb2.Adapter:
        answered = await self.on_every_replica(
            "UnloadAdapter", inference_pb2.UnloadAdapterRequest(adapter_id=adapter_id)
        )
        for replica, adapter in answered:
            replica.loaded -= {adapter_id, adapter.id, adapter.name}
        return answered[0][1]

    async def forget_adapters(self, adapter_ids: list[str]) -> None:
        """Unload versions just deleted from the volume, wherever they are loaded. Best
        effort: a replica without one loaded answers NOT_FOUND, one that is down starts
        again without it, and none can load it again, as it no longer resolves."""

        async def unload(replica: Replica, adapter_id: str) -> None:
            request = inference_pb2.UnloadAdapterRequest(adapter_id=adapter_id)
            try:
                await self._call_on(replica, "UnloadAdapter", request, None, "")
            except BackendError as err:
                if err.code not in ("NOT_FOUND", "UNAVAILABLE"):
                    log.warning("unloading deleted %s on %s: %s", adapter_id, replica.addr, err)

        replicas = list(self.replicas)
        await asyncio.gather(*(unload(r, a) for r in replicas for a in adapter_ids))
        names = {AdapterId.name_of(adapter_id) for adapter_id in adapter_ids}
        for replica in replicas:
            replica.loaded -= {*adapter_ids, *names}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in self.replicas + self._retired:
            await replica.backend.close()
