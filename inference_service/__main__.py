"""`python -m inference_service`."""

import os

# Before torch loads OpenMP: the engine shares its cores with the gRPC threads (and, in the
# embedded stack, with the gateway); OpenMP workers spinning between ops starve them. On 2
# shared cores, spinning made batched decoding several times slower. Set it to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .server import main  # noqa: E402

main()
