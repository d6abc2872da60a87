"""The evaluation's client of the inference service: generations and reference losses,
every call with a deadline; gRPC errors come back as TuneyardErrors."""

import math
import time
from dataclasses import dataclass

import grpc

from tuneyard import errors
from tuneyard.grpc_server import call_error
from tuneyard.service_auth import Tokens, client_channel
from tuneyard.v1 import inference_pb2, inference_pb2_grpc


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float
    tokens: tuple[tuple[int, str], ...] = ()  # (id, text) of each generated token


class InferenceClient:
    def __init__(self, addr: str, timeout_s: float, tokens: Tokens = ()):
        if not addr:
            raise errors.FailedPrecondition(
                "evaluation runs through the inference service: set TUNEYARD_INFERENCE_ADDR"
            )
        self.addr = addr
        self.timeout_s = timeout_s
        self.channel = client_channel(addr, tokens)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def info(self) -> inference_pb2.InfoResponse:
        return self._call("Info", inference_pb2.InfoRequest(), timeout_s=10)

    def generate(self, prompt: str, adapter_id: str, parameters: dict) -> Generation:
        request = inference_pb2.GenerateRequest(
            inputs=prompt,
            adapter_id=adapter_id,
            parameters=inference_pb2.GenerationParameters(details=True, **parameters),
        )
        started = time.monotonic()
        reply = self._call("Generate", request)
        return Generation(
            reply.generated_text,
            reply.details.prompt_tokens,
            reply.details.generated_tokens,
            time.monotonic() - started,
            tuple((t.id, t.text) for t in reply.details.tokens),
        )

    def reference_nll(
        self, prompt: str, reference: str, adapter_id: str, prompt_tokens: int
    ) -> tuple[float, int]:
        """Summed negative log-likelihood of the reference given the prompt, and its token
        count. The reference's tokens are those of `prompt + reference` after the first
        `prompt_tokens` (the length the service gives the prompt alone)."""
        request = inference_pb2.GenerateRequest(
            inputs=prompt + reference,
            adapter_id=adapter_id,
            parameters=inference_pb2.GenerationParameters(
                max_new_tokens=1, decoder_input_details=True, details=True
            ),
        )
        prefill = self._call("Generate", request).details.prefill
        logprobs = [t.logprob for t in prefill[max(prompt_tokens, 1) :]]
        if not logprobs or any(math.isnan(lp) for lp in logprobs):
            raise errors.FailedPrecondition(
                "the inference service returned no prompt logprobs (decoder_input_details)"
            )
        return -sum(logprobs), len(logprobs)

    def _call(self, method: str, request, timeout_s: float | None = None):
        try:
            return getattr(self.stub, method)(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as err:
            raise call_error("inference", err) from None
