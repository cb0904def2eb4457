"""A training run's folder: its state files, its lock, and removing the state for `--no-resume`.

Standard library only, so that `lc train` can take the lock and remove an old state before anything
slow (torch, the config) is imported: a `--no-resume` run killed in its first seconds then leaves no
old model looking done.

The lock: `<out>/.train.lock`, an exclusive `fcntl.flock` held while one process trains there (the
main process of a torchrun job; the file says which PID on which host). A second `lc train` into the
same folder stops at once naming the holder, instead of interleaving its rows and checkpoints with
the first. The kernel drops the lock when its holder exits, however it exits (SIGKILL included),
so a killed run never leaves the folder locked; the file itself stays.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

__all__ = ["LOCK_NAME", "RunFolderLock", "RunLockedError", "is_main_process", "remove_state", "state_paths"]

log = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"
_held: dict[Path, list[int]] = {}  # lock file -> [descriptor, depth] held by this process


class RunLockedError(ValueError):
    """Another process trains in the same run folder (a user error: the message names its PID)."""


def state_paths(out: Path) -> tuple[Path, Path, Path]:
    """checkpoint.pt (the final weights), resume.pt (the rolling state), train_done.json of a run folder."""
    return out / "checkpoint.pt", out / "resume.pt", out / "train_done.json"


def is_main_process() -> bool:
    """True unless this is a torchrun worker of rank > 0 (from the environment, before torch is loaded)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def remove_state(out: Path, why: str = "--no-resume") -> list[Path]:
    """Delete resume.pt, checkpoint.pt and train_done.json of run folder `out`; returns those removed."""
    checkpoint, resume, done = state_paths(Path(out))
    removed = []
    for path in (done, checkpoint, resume):  # "done" first: never a done marker without its model
        if path.exists():
            log.info("%s: removing %s", why, path)
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunFolderLock:
    """`acquire()` / `release()` the run folder's lock; re-entrant within one process, a no-op when
    `enabled` is false (torchrun workers of rank > 0: their main process holds it)."""

    def __init__(self, out: str | Path, enabled: bool = True):
        self.out = Path(out)
        self.path = Path(os.path.abspath(self.out / LOCK_NAME))
        self.enabled = enabled
        self._acquired = False

    def acquire(self) -> RunFolderLock:
        if not self.enabled or self._acquired:
            return self
        if self.path in _held:
            _held[self.path][1] += 1
            self._acquired = True
            return self
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has not said"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLockedError(f"{self.out} is in use: another `lc train` ({holder}) trains there, "
                                 f"holding {self.path}; wait for it to finish or stop it, then run again "
                                 "(or choose another --out)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        _held[self.path] = [fd, 1]
        self._acquired = True
        return self

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        entry = _held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.path]
            os.close(entry[0])  # closing the last descriptor drops the flock

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
