"""Telling the inference service that a new adapter version is there to load: every
replica of it (see tuneyard.replicas), so that the first request anywhere finds it loaded."""

import grpc

from tuneyard.errors import Unavailable
from tuneyard.grpc_server import call_error
from tuneyard.replicas import ReplicaAddresses
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

LOAD_DEADLINE_S = 60.0


class InferenceNotifier:
    def __init__(self, address: str, deadline_s: float = LOAD_DEADLINE_S):
        self.address = address
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
                self._channels[addr] = grpc.insecure_channel(addr)
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
