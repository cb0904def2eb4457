"""What Triton compiled and what it found in its on-disk cache, counted through its compile listener.

Triton keys each compiled variant by its source, its specialisation, the target (backend, compute
capability), its options and its own version, and looks the key up in `TRITON_CACHE_DIR` (default
~/.triton/cache) before compiling. `lc bench gpu-compile` compiles for a GPU that is not here into
that cache; a GPU run with the same cache, Triton wheel and lc source then loads those variants
instead of compiling them. `log_compiles()` counts both, so a run can say which happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["CompileLog", "cache_dir", "log_compiles"]


@dataclass
class CompileLog:
    """Triton compiles seen while `log_compiles` was active."""

    compiled: int = 0      # variants built here (a cache miss)
    cache_hits: int = 0    # variants loaded from the on-disk cache
    compile_s: float = 0.0  # seconds Triton reports for both (a hit costs milliseconds)
    last_hit: bool | None = None  # of the latest variant

    def record(self, cache_hit: bool, micros: float) -> None:
        self.cache_hits += int(cache_hit)
        self.compiled += int(not cache_hit)
        self.compile_s += micros / 1e6
        self.last_hit = cache_hit

    def as_row(self) -> dict:
        return {"compiled": self.compiled, "cache_hits": self.cache_hits,
                "compile_s": round(self.compile_s, 2), "cache_dir": cache_dir()}


def cache_dir() -> str:
    """Triton's on-disk kernel cache (TRITON_CACHE_DIR), or "" without Triton."""
    try:
        from triton import knobs
    except ImportError:
        return ""
    return str(knobs.cache.dir)


@contextmanager
def log_compiles() -> Iterator[CompileLog]:
    """Within: every Triton compile (built or loaded from the cache) is counted in the yielded log;
    a listener already installed still hears every event. Without Triton the log stays empty."""
    log = CompileLog()
    try:
        from triton import knobs
    except ImportError:
        yield log
        return
    previous = knobs.compilation.listener

    def listener(**event) -> None:
        times = event.get("times")
        log.record(bool(event["cache_hit"]), float(getattr(times, "total", 0)))
        if previous is not None:
            previous(**event)

    knobs.compilation.listener = listener
    try:
        yield log
    finally:
        knobs.compilation.listener = previous
