"""Facts read from the proto descriptors, so that code does not repeat the contract."""

from google.protobuf.descriptor import Descriptor

from tuneyard.v1 import inference_pb2


def optional_fields(descriptor: Descriptor) -> tuple[str, ...]:
    """A message's scalar fields with presence (proto3 `optional`): unset is not zero."""
    return tuple(
        field.name
        for field in descriptor.fields
        if field.has_presence and field.message_type is None
    )


# The protos' counters (token counts, steps, seeds of a job) are uint32: a larger number is
# refused where it enters, naming its field.
UINT32_MAX = 2**32 - 1

# The sampling parameters a request may leave unset, for the engine to pick its default.
OPTIONAL_GENERATION_PARAMETERS = optional_fields(inference_pb2.GenerationParameters.DESCRIPTOR)
