"""Why a generation stopped, in each API's word: one table from the inference service's
FinishReason (the proto enum) to what TGI's and OpenAI's clients expect."""

from typing import NamedTuple

from tuneyard.v1 import inference_pb2


class FinishWords(NamedTuple):
    tgi: str
    openai: str


_WORDS = {
    inference_pb2.LENGTH: FinishWords(tgi="length", openai="length"),
    inference_pb2.EOS_TOKEN: FinishWords(tgi="eos_token", openai="stop"),
    inference_pb2.STOP_SEQUENCE: FinishWords(tgi="stop_sequence", openai="stop"),
}
# A reply that names no reason (FINISH_REASON_UNSPECIFIED) still gets a word each client
# accepts.
_UNSPECIFIED = FinishWords(tgi="length", openai="stop")


def finish_words(reason: int) -> FinishWords:
    return _WORDS.get(reason, _UNSPECIFIED)
