"""Side-by-side measurements; each writes a JSON result to benchmarks/results/ and a table."""

import os

# What `python -m inference_service` does, set before torch loads OpenMP, so that the naive
# side of a comparison runs its threads the same way as the service.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
