"""The engine thread is the only thread of the inference service that runs torch's CPU
work on several cores; every other thread runs it on one.

torch runs its intra-op work on OpenMP, and libgomp gives each thread that runs a parallel
region a team of workers of its own, kept while that thread lives. Once a process holds
more OpenMP threads than cores, libgomp cuts every worker's spin-wait between parallel
regions short, so each of the thousands of small ops of a decode step pays a sleep and a
wake-up. The main thread that loaded the model, or a gRPC thread that once loaded an
adapter, is enough to cross that line on a small machine: on 2 cores, a 16-row decode step
took 1.5x as long on the engine thread once another thread had run one parallel op. For the
same reason the service leaves OpenMP's wait policy alone (a passive one sleeps after every
op: about 35% slower here).
"""

import threading

import torch


def one_thread_by_default() -> int:
    """Make one intra-op thread the default of every thread of this process that has not run
    torch yet; return the count torch had chosen (OMP_NUM_THREADS, else the cores)."""
    chosen = torch.get_num_threads()
    torch.set_num_threads(1)
    return chosen


def claim_cores(threads: int) -> None:
    """Run the calling thread's torch work on `threads` threads, and leave the default that
    threads starting later get as it was."""
    default = torch.get_num_threads()  # torch fixes a thread's count on its first use: now
    if threads == default:
        return
    torch.set_num_threads(threads)  # sets this thread's count, and the default too
    restore = threading.Thread(target=torch.set_num_threads, args=(default,))
    restore.start()
    restore.join()
