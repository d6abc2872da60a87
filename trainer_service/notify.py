"""Telling the inference service that a new adapter version is there to load."""

import grpc

from tuneyard.v1 import inference_pb2, inference_pb2_grpc

LOAD_DEADLINE_S = 60.0


class InferenceNotifier:
    def __init__(self, address: str, deadline_s: float = LOAD_DEADLINE_S):
        self.address = address
        self._deadline_s = deadline_s
        self._channel = grpc.insecure_channel(address)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def load_adapter(self, adapter_id: str) -> None:
        """Raises grpc.RpcError when the service is down or refuses the adapter."""
        self._stub.LoadAdapter(
            inference_pb2.LoadAdapterRequest(adapter_id=adapter_id), timeout=self._deadline_s
        )

    def close(self) -> None:
        self._channel.close()
