"""InferenceService over gRPC: proto messages in and out, the engine does the work."""

import json

import grpc

from tuneyard.errors import InvalidArgument
from tuneyard.grpc_server import maps_errors, maps_stream_errors
from tuneyard.protos import OPTIONAL_GENERATION_PARAMETERS
from tuneyard.v1 import inference_pb2 as pb
from tuneyard.v1 import inference_pb2_grpc

from .adapter_cache import AdapterInfo
from .engine_base import EngineBase
from .params import GenerateInput, Parameters
from .sequence import Details, RequestCancelled, TokenInfo

FINISH_REASONS = {"length": pb.LENGTH, "eos_token": pb.EOS_TOKEN, "stop_sequence": pb.STOP_SEQUENCE}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: EngineBase):
        self.engine = engine

    @maps_errors
    def Generate(self, request, context):
        seq = self.engine.submit(to_input(request), route="Generate")
        context.add_callback(seq.cancel)  # runs when the client goes away, too
        try:
            result = seq.result()
        except RequestCancelled as err:
            context.abort(grpc.StatusCode.CANCELLED, str(err))
        return pb.GenerateResponse(
            generated_text=result.generated_text, details=to_details(result.details)
        )

    @maps_stream_errors
    def GenerateStream(self, request, context):
        seq = self.engine.submit(to_input(request), route="GenerateStream")
        context.add_callback(seq.cancel)
        try:
            for chunk in seq.stream():
                message = pb.GenerateStreamResponse(tokens=[to_token(t) for t in chunk.tokens])
                if chunk.details is not None:
                    message.generated_text = chunk.generated_text
                    message.details.CopyFrom(to_details(chunk.details))
                yield message
        except RequestCancelled as err:
            context.abort(grpc.StatusCode.CANCELLED, str(err))
        finally:
            seq.cancel()  # a no-op once finished; stops the work if the stream is closed early

    @maps_errors
    def LoadAdapter(self, request, context):
        return to_adapter(self.engine.adapters.load(request.adapter_id))

    @maps_errors
    def UnloadAdapter(self, request, context):
        return to_adapter(self.engine.adapters.unload(request.adapter_id))

    @maps_errors
    def ListAdapters(self, request, context):
        return pb.ListAdaptersResponse(
            adapters=[to_adapter(a) for a in self.engine.adapters.list()]
        )

    @maps_errors
    def Info(self, request, context):
        return pb.InfoResponse(**self.engine.info())

    @maps_errors
    def Tokenize(self, request, context):
        tokens = self.engine.tokenize(request.inputs)
        return pb.TokenizeResponse(
            tokens=[pb.InputToken(id=i, text=t, start=a, stop=b) for i, t, a, b in tokens]
        )


def to_input(request: pb.GenerateRequest) -> GenerateInput:
    p = request.parameters
    optional = {
        name: getattr(p, name) if p.HasField(name) else None
        for name in OPTIONAL_GENERATION_PARAMETERS
    }
    params = Parameters(
        **optional,
        do_sample=p.do_sample,
        stop=list(p.stop),
        return_full_text=p.return_full_text,
        details=p.details,
        decoder_input_details=p.decoder_input_details,
        logit_bias=dict(p.logit_bias),
        grammar=(p.grammar.type, p.grammar.value) if p.HasField("grammar") else None,
    )
    return GenerateInput(
        inputs=request.inputs,
        adapter_id=request.adapter_id,
        parameters=params,
        fields=dict(request.fields),
        messages=[{"role": m.role, "content": m.content} for m in request.messages],
        tools=_tools(request.tools),
        continuation_ids=list(request.continuation_ids),
    )


def _tools(text: str) -> list[dict]:
    if not text:
        return []
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"tools is not valid JSON: {err}", param="tools") from err
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidArgument("tools must be a JSON list of objects", param="tools")
    return tools


def to_token(token: TokenInfo) -> pb.Token:
    return pb.Token(
        id=token.id,
        text=token.text,
        logprob=token.logprob,
        special=token.special,
        top_tokens=[to_token(t) for t in token.top],
    )


def to_details(details: Details) -> pb.GenerateDetails:
    return pb.GenerateDetails(
        finish_reason=FINISH_REASONS[details.finish_reason],
        generated_tokens=details.generated_tokens,
        prompt_tokens=details.prompt_tokens,
        seed=details.seed,
        prefill=[to_token(t) for t in details.prefill],
        tokens=[to_token(t) for t in details.tokens],
        adapter=details.adapter,
    )


def to_adapter(info: AdapterInfo) -> pb.Adapter:
    return pb.Adapter(
        id=info.id,
        name=info.name,
        version=info.version,
        loaded=info.loaded,
        rank=info.rank,
        target_modules=info.target_modules,
        size_bytes=info.size_bytes,
        last_used_at=info.last_used_at,
        base_model=info.base_model,
        created_at=int(info.created_at),
        state=info.state,
        recipe=info.recipe,
        template_fields=info.template_fields,
        trained_on=info.trained_on,
        served_on=info.served_on,
        faithful=info.faithful,
        gate=info.gate,
        live=info.live,
    )
