"""Read access to one preset's outputs under results/<preset>/ (eval JSONs, sweep and bench CSVs).

Every file name comes from `lc.report.outputs`; nothing here spells a path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from lc.report import outputs


class Run:
    """Read access to the outputs of one preset under results/<preset>/ (missing files -> None)."""

    def __init__(self, results: str | Path, cfg: dict):
        self.root = Path(results)
        self.cfg = cfg

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def json(self, *parts: str) -> dict | None:
        path = self.path(*parts)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it and rerun its rule") from exc

    def csv(self, *parts: str) -> pd.DataFrame | None:
        path = self.path(*parts)
        if not path.exists():
            return None
        frame = pd.read_csv(path)
        if frame.empty:
            return None
        return frame

    def eval(self, dataset: str, variant: str, split: str = "val", multi_scale: bool = False,
             crf: bool = False) -> dict | None:
        return self.json(self.eval_path(dataset, variant, split, multi_scale, crf))

    def eval_path(self, dataset: str, variant: str, split: str = "val", multi_scale: bool = False,
                  crf: bool = False) -> str:
        """The eval JSON's path relative to results/<preset>/ (as the tables' notes print it)."""
        return outputs.eval_json(dataset, variant, split, outputs.eval_protocol(multi_scale, crf))

    def train_done(self, dataset: str, variant: str) -> dict | None:
        """runs/<dataset>/<variant>/train_done.json (iterations, iterations_total, ...) or None."""
        return self.json(outputs.train_done(dataset, variant))


def as_number(value) -> float | None:
    """A finite float, or None for missing/NaN/None."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def difference(ours, paper) -> float | None:
    ours, paper = as_number(ours), as_number(paper)
    return None if ours is None or paper is None else round(ours - paper, 2)


def rounded(value, digits: int = 2) -> float | None:
    value = as_number(value)
    return None if value is None else round(value, digits)


def as_int(value) -> int | None:
    """An integer count (iterations, images, pixels) or None."""
    value = as_number(value)
    return None if value is None else int(round(value))
