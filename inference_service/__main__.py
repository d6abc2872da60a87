"""`python -m inference_service`."""

from .server import main

main()
