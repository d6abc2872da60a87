"""The training worker: one job, one process. Run as
`python -m trainer_service.worker --job-id ID --workdir DIR`; it reads DIR/spec.json,
reports JSON lines on stdout (see executors/base.py) and publishes the adapter."""
