import argparse
import os
import signal
import sys
from pathlib import Path

from trainer_service.worker.events import EventWriter, take_stdout
from trainer_service.worker.run import is_main_process, main


def stop_with_the_trainer() -> None:
    """A local worker must not outlive a trainer killed with SIGKILL (no time to cancel it):
    Linux sends us SIGTERM when the parent goes, which stops the run at the next step without
    publishing, like a cancel. The job is resumed from its checkpoint by the next trainer,
    which then has the job folder to itself."""
    parent = os.environ.get("TUNEYARD_WORKER_PARENT_PID")
    if not parent or sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the trainer died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m trainer_service.worker")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args()
    # Before anything imports transformers: stdout is the event channel, nothing else.
    events = take_stdout()
    if not is_main_process():  # other torchrun ranks train silently
        events = EventWriter(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    stop_with_the_trainer()
    raise SystemExit(main(args.job_id, args.workdir, events))
