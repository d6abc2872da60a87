"""OpenAI's `metadata` on a fine-tuning job: up to 16 string pairs, for a client's own
bookkeeping (and for filtering the job list); checked the same wherever a job is created."""

from tuneyard.errors import InvalidArgument

MAX_PAIRS = 16
MAX_KEY = 64
MAX_VALUE = 512


def check_metadata(metadata: dict | None) -> dict[str, str]:
    """The metadata as a plain dict; InvalidArgument naming `metadata` when it breaks
    OpenAI's limits."""
    metadata = dict(metadata or {})
    if len(metadata) > MAX_PAIRS:
        raise InvalidArgument(
            f"metadata has {len(metadata)} keys; at most {MAX_PAIRS} are allowed",
            param="metadata",
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument("metadata keys and values must be strings", param="metadata")
        if not key or len(key) > MAX_KEY:
            raise InvalidArgument(
                f"metadata key {key[:MAX_KEY]!r}: a key has 1 to {MAX_KEY} characters",
                param="metadata",
            )
        if len(value) > MAX_VALUE:
            raise InvalidArgument(
                f"metadata[{key!r}] has {len(value)} characters; at most {MAX_VALUE}",
                param="metadata",
            )
    return metadata
