"""Progress of the evaluation loops: a tqdm bar on a terminal, plain log lines otherwise.

Under Snakemake (or any redirected stderr) a bar would fill the log with carriage returns, so
there the loop logs one `INFO` line every `log_every` items and one at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def progress(items: Iterable[T], total: int, desc: str, log_every: int = 20, unit: str = "img",
             logger: logging.Logger = log) -> Iterator[T]:
    """Yield `items`, showing progress as tqdm when stderr is a TTY, else as log lines."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False)
        return
    every = max(1, int(log_every))
    start = time.perf_counter()
    done = 0
    for done, item in enumerate(items, start=1):
        yield item
        if done % every == 0 and done < total:
            logger.info("%s: %d/%d %s (%.1f s)", desc, done, total, unit, time.perf_counter() - start)
    logger.info("%s: %d/%d %s done (%.1f s)", desc, done, total, unit, time.perf_counter() - start)
