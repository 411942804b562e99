"""Ctrl-C on Snakemake stops the pipeline's jobs within seconds, their checkpoints saved.

Snakemake's local executor runs each shell job as a child of its own process and, on SIGINT, only waits for the
running jobs to finish ("Terminating processes on user request, this might take some time"): a training job would
go on for hours. :func:`forward_interrupt` (installed by ``workflow/rules/common.smk``) makes the first SIGINT send
SIGTERM to every descendant process (the jobs' shells, torchrun, its workers) and then lets Snakemake handle the
interrupt as usual. Training processes treat SIGTERM as preemption (``alta.train.engine``): they finish the current step,
write ``last.pt`` and exit, and the next run resumes from it. On a cluster executor the descendants are only its
status commands; Slurm jobs are cancelled by the executor itself (scancel sends SIGTERM, handled the same way).
"""

from __future__ import annotations

import os
import signal


def _stop_descendants() -> int:
    import psutil

    n = 0
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            child.send_signal(signal.SIGTERM)
            n += 1
        except psutil.Error:  # already gone
            pass
    return n


def forward_interrupt() -> None:
    """Install the SIGINT handler described in the module docstring (in the Snakemake process, main thread)."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        n = _stop_descendants()
        if n:
            print(f"alta: interrupted: sent SIGTERM to {n} job process(es); training jobs save last.pt and stop",
                  flush=True)
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C gets Snakemake's (or Python's) own handling
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
