"""Telling the inference service that a new adapter version is there to load: every
replica of it (see tuneyard.replicas), so that the first request anywhere finds it loaded."""

import logging

import grpc

from trainer_service.journal import JobJournal
from tuneyard.errors import TuneyardError, Unavailable
from tuneyard.grpc_server import call_error
from tuneyard.replicas import ReplicaAddresses
from tuneyard.service_auth import Tokens, client_channel
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
LOAD_DEADLINE_S = 60.0
_TRANSPORT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"})


class InferenceNotifier:
    def __init__(self, address: str, deadline_s: float = LOAD_DEADLINE_S, tokens: Tokens = ()):
        self.address = address
        self._tokens = tokens  # the service token the calls carry (tuneyard.service_auth)
        self.replicas = ReplicaAddresses(address)  # ValueError for a bad address
        self._deadline_s = deadline_s
        self._channels: dict[str, grpc.Channel] = {}

    def load_adapter(self, adapter_id: str) -> None:
        """Load on every replica known now. Raises, once all were tried, the first
        replica's error as a TuneyardError (see call_error: a replica down or refusing the
        adapter), or Unavailable when the address names no replica."""
        addresses = self.replicas.refresh()
        if not addresses:
            raise Unavailable(f"{self.address} names no inference replica now")
        for gone in set(self._channels) - set(addresses):
            self._channels.pop(gone).close()
        errors = []
        for addr in addresses:
            if addr not in self._channels:
                self._channels[addr] = client_channel(addr, self._tokens)
            stub = inference_pb2_grpc.InferenceServiceStub(self._channels[addr])
            try:
                stub.LoadAdapter(
                    inference_pb2.LoadAdapterRequest(adapter_id=adapter_id),
                    timeout=self._deadline_s,
                )
            except grpc.RpcError as err:
                errors.append(call_error("inference", err))
        if errors:
            raise errors[0]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class AdapterPreloader:
    """Asks the inference service to load a version a job published, so that its first
    request does not pay for the load; the job's events say how that went."""

    def __init__(self, notifier: InferenceNotifier, journal: JobJournal):
        self.notifier = notifier
        self.journal = journal

    def __call__(self, job_id: str, model: str) -> None:
        try:
            self.notifier.load_adapter(model)
            self.journal.event(job_id, f"the inference service loaded {model}")
        except Exception as err:  # a TuneyardError mostly; serving can still load it later
            failed = err if isinstance(err, TuneyardError) else TuneyardError(str(err))
            detail, code = failed.message, failed.code
            log.warning(
                "%s: LoadAdapter %s at %s: %s", job_id, model, self.notifier.address, detail
            )
            # The service's own answer (a base model mismatch...) helps; gRPC's transport
            # words (addresses, "recvmsg:...") and crashes are for the log only.
            said = "" if code in _TRANSPORT_CODES else f": {detail}"
            self.journal.event(
                job_id,
                f"could not tell the inference service to load {model} ({code}){said}; "
                "it is loaded on first use",
                level="warn",
            )
