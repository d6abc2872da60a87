import argparse
import os
from pathlib import Path

from trainer_service.worker.events import EventWriter, take_stdout
from trainer_service.worker.run import is_main_process, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m trainer_service.worker")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args()
    # Before anything imports transformers: stdout is the event channel, nothing else.
    events = take_stdout()
    if not is_main_process():  # other torchrun ranks train silently
        events = EventWriter(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    raise SystemExit(main(args.job_id, args.workdir, events))
