"""Stopping a training cleanly before a scheduler's time limit (SLURM) or on a termination signal.

`StopRequest` turns SIGUSR1, SIGTERM and SIGALRM into a flag that the loop reads after every
iteration (`should_stop`): the loop then writes resume.pt and raises `Preempted`, which `lc train`
turns into exit code `EXIT_RESUBMIT` (75, EX_TEMPFAIL): Snakemake retries the failed job (the SLURM
profile lists `train` under `preemptible-rules`) and the next job resumes from resume.pt.

Why an alarm and not only `sbatch --signal`: the SLURM executor plugin runs the job without `srun`,
so `--signal=USR1@T` reaches no process (it signals job steps only) and `--signal=B:USR1@T` kills the
batch shell, which ends the job at once. Inside a SLURM job `StopRequest.install` therefore asks
`squeue` how long the job has left and arms SIGALRM `margin_s` seconds before the limit; a USR1 or
TERM sent to the process (`scancel --signal=USR1 --full JOB`, `kill -USR1 PID`) does the same at once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from types import FrameType

import torch
import torch.distributed as dist

__all__ = ["EXIT_RESUBMIT", "STOP_SIGNALS", "Preempted", "StopRequest", "parse_time_left", "slurm_time_left"]

log = logging.getLogger(__name__)
EXIT_RESUBMIT = 75  # EX_TEMPFAIL: stopped early with resume.pt written; run the same command again
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGALRM)


class Preempted(Exception):
    """Training stopped on a signal after writing resume.pt at `iteration`."""

    def __init__(self, signame: str, iteration: int, resume_path: str) -> None:
        super().__init__(f"stopped on {signame} at iteration {iteration}: {resume_path} written; the next "
                         f"run of the same command resumes there (exit code {EXIT_RESUBMIT}: resubmit)")
        self.signame, self.iteration, self.resume_path = signame, iteration, resume_path


_TIME_LEFT = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_time_left(text: str) -> int | None:
    """Seconds in squeue's `%L` ([days-][hours:]minutes:seconds); None for UNLIMITED/INVALID/NOT_SET."""
    match = _TIME_LEFT.match(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def slurm_time_left(job_id: str | None = None) -> int | None:
    """Seconds the SLURM job has left (squeue), or None outside SLURM / without a limit / on failure."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    squeue = shutil.which("squeue")
    if not job_id or squeue is None:
        return None
    try:
        text = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_time_left(text)


class StopRequest:
    """A flag set by STOP_SIGNALS while installed (a context manager; restores the old handlers)."""

    def __init__(self, margin_s: int = 300, time_left_s: int | None = None) -> None:
        self.margin_s = int(margin_s)
        self.time_left_s = time_left_s  # None: ask squeue inside a SLURM job
        self.signame: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signame is None:
            self.signame = signal.Signals(signum).name
            log.warning("%s received: stopping after this iteration (resume.pt, exit %d)", self.signame,
                        EXIT_RESUBMIT)

    def install(self) -> StopRequest:
        """Handle STOP_SIGNALS; inside a SLURM job with a time limit, SIGALRM margin_s before it."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        left = self.time_left_s if self.time_left_s is not None else slurm_time_left()
        if left is not None and self.margin_s > 0:
            delay = max(1, left - self.margin_s)
            signal.alarm(delay)
            log.info("time limit in %d s: stopping (resume.pt) in %d s", left, delay)
        return self

    def uninstall(self) -> None:
        signal.alarm(0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def should_stop(self, device: torch.device | None = None, distributed: bool = False) -> bool:
        """Whether to stop now; under torchrun, when any process was signalled (one all-reduce)."""
        requested = self.signame is not None
        if not distributed:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.signame is None:
            self.signame = "a signal to another process"
        return flag.item() > 0
