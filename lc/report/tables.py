"""The paper's six tables, rebuilt from this run's outputs beside the published numbers.

Every table has our columns, the paper's (prefixed `paper_`, only ever from
`lc.report.paper.load_paper_table`), the difference (`diff_` = ours - paper, empty when the two were
not made the same way) and protocol columns saying how each number was made. A value the run did not
produce stays empty and `note` says why. The builders live by table family: tables_accuracy (1, 2),
tables_per_class (4, 5), tables_speed (3, 6); tables_markdown renders tables.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lc.data.io import write_csv, write_text_atomic
from lc.report import outputs
from lc.report.outputs import TABLE_FILES
from lc.report.paper import PAPER_SPEED_PROTOCOL
from lc.report.results import Run
from lc.report.table_common import CITED
from lc.report.tables_accuracy import build_table1, build_table2, model_cascade_reading
from lc.report.tables_markdown import render_markdown_file
from lc.report.tables_per_class import build_table4, build_table5
from lc.report.tables_speed import build_table3, build_table6

__all__ = ["BUILDERS", "CITED", "TABLE_FILES", "TABLE_TITLES", "build_table", "render_markdown",
           "write_tables"]

TABLE_TITLES = {
    1: "Table 1: stage shares and mIoU over rho (VOC val)",
    2: "Table 2: ablation (VOC val)",
    3: "Table 3: speed at the benchmark image size",
    4: "Table 4: per-class IoU, PASCAL VOC 2012",
    5: "Table 5: per-class IoU, Cityscapes",
    6: "Table 6: IRNet-LC settings against the state of the art (VOC)",
}
_PAPER_SPEED = (f"the paper's times are on its {PAPER_SPEED_PROTOCOL['device']} class GPU at "
                f"{PAPER_SPEED_PROTOCOL['image_size']} x {PAPER_SPEED_PROTOCOL['image_size']}")
TABLE_CAPTIONS = {
    1: "`training` says whether the rows come from one model re-thresholded or one model per rho, "
       "`model` which run made each row.",
    2: f"`iterations`: this run; `iterations_total`: with its initialisation chain back to ImageNet. "
       f"{model_cascade_reading()}.",
    3: f"`ms`/`fps`: median over the benchmark runs; {_PAPER_SPEED}. `diff_ms`/`diff_fps` stay empty "
       "unless our device and image size match. DeepLab-v2's and SegNet's mIoU are cited.",
    4: "Our rows are VOC val (test labels are server-only), the paper's are VOC test; the protocol "
       "columns say which scales, fusion and flip made each row.",
    5: "Our row is Cityscapes val, the paper's are Cityscapes test.",
    6: f"FPS: {_PAPER_SPEED} for the paper; `diff_fps` stays empty unless device and image size match. "
       "The protocol columns say which scales, fusion and flip made our mIoU.",
}
# columns that hold counts: written as integers in the CSV even when some rows are empty
INTEGER_COLUMNS = ("num_images", "image_size", "batch_size", "runs", "iterations", "iterations_total")

BUILDERS = {1: build_table1, 2: build_table2, 3: build_table3,
            4: build_table4, 5: build_table5, 6: build_table6}


def build_table(number: int, results: str | Path, cfg: dict,
                paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Table `number` (1-6) of the run under `results` (results/<preset>/)."""
    if number not in BUILDERS:
        raise ValueError(f"the paper has Tables 1-6, not {number}")
    frame = BUILDERS[number](Run(results, cfg), paper_dir)
    for column in INTEGER_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column]).round().astype("Int64")
    return frame


def write_tables(cfg: dict, out_dir: str | Path, results: str | Path, numbers: Iterable[int] = range(1, 7),
                 paper_dir: str | Path | None = None) -> list[Path]:
    """Write table<n>_*.csv for each number into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for number in numbers:
        frame = build_table(number, results, cfg, paper_dir)
        path = out_dir / TABLE_FILES[number]
        write_csv(frame, path)
        written.append(path)
    return written


def render_markdown(out_dir: str | Path, preset: str) -> Path:
    """tables.md: all six table CSVs of out_dir rendered as Markdown, in order."""
    out_dir = Path(out_dir)
    text = render_markdown_file(out_dir, TABLE_FILES, TABLE_TITLES, TABLE_CAPTIONS, preset)
    path = out_dir / Path(outputs.TABLES_MD).name
    write_text_atomic(path, text)
    return path
