"""tables.md: the six table CSVs made readable.

The CSVs keep every column for machines; the Markdown puts ours, the paper's and the difference side by
side (`miou | paper_miou | diff_miou`), moves protocol values that are the same on every row of a table
into a line above it, turns notes into numbered footnotes and prints integers as integers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

# columns that say how a number was made; when constant over a table they go above it
PROTOCOL_COLUMNS = ("preset", "dataset", "split", "evaluated_split", "device", "num_images", "image_size",
                    "batch_size", "runs", "full_size", "scales", "fusion", "flip", "crf", "rho",
                    "mask_source", "training", "miou_source", "backbone", "coco", "init_from", "iterations",
                    "iterations_total")
# in the CSV for machines, not in the Markdown
HIDDEN_COLUMNS = ("eval_file", "bench_method", "variant", "ms_p25", "ms_p75")


def _empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _integer_column(values: pd.Series) -> bool:
    """All non-empty values are whole numbers (counts, published shares): print them without '.0'."""
    numbers = [v for v in values if not _empty(v)]
    return bool(numbers) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and float(v).is_integer() for v in numbers)


def format_value(value, integer: bool = False) -> str:
    if _empty(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if integer or float(value).is_integer() and abs(value) >= 1000:
            return str(int(round(float(value))))
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def side_by_side(columns: list[str]) -> list[str]:
    """Column order with `paper_<x>` and `diff_<x>` right after `<x>` (or where the first of them was)."""
    ordered: list[str] = []
    for column in columns:
        base = column.removeprefix("paper_").removeprefix("diff_")
        group = [c for c in (base, f"paper_{base}", f"diff_{base}") if c in columns]
        if len(group) == 1:
            group = [column]
        for c in group:
            if c not in ordered:
                ordered.append(c)
    return ordered


def constant_protocol(frame: pd.DataFrame) -> dict[str, object]:
    """Protocol columns with one value on every row of this run.

    With a `source` column (tables 4-6, which list cited methods too) only a column that is empty on
    the cited rows can move, and it must be equal on all reproduced rows; otherwise rows without a
    value (a rho this preset did not sweep) do not count.
    """
    constant = {}
    ours = frame["source"] == "reproduced" if "source" in frame.columns else None
    for column in PROTOCOL_COLUMNS:
        if column not in frame.columns:
            continue
        integer = _integer_column(frame[column])
        if ours is not None:
            if not ours.any() or any(not _empty(v) for v in frame.loc[~ours, column]):
                continue
            values = {format_value(v, integer) for v in frame.loc[ours, column]}
        else:
            values = {format_value(v, integer) for v in frame[column] if not _empty(v)}
        if len(values) <= 1:
            constant[column] = values.pop() if values else ""
    return constant


def _footnotes(notes: pd.Series) -> tuple[list[str], list[str]]:
    """(cell per row: '[1]', '[1, 2]' or '', the numbered notes)."""
    numbered: list[str] = []
    cells = []
    for note in notes:
        refs = []
        for part in ([] if _empty(note) else [p.strip() for p in str(note).split("; ") if p.strip()]):
            if part not in numbered:
                numbered.append(part)
            refs.append(str(numbered.index(part) + 1))
        cells.append(f"[{', '.join(refs)}]" if refs else "")
    return cells, [f"{i}. {text}" for i, text in enumerate(numbered, 1)]


def render_table(frame: pd.DataFrame) -> tuple[str, str, list[str]]:
    """(protocol line, Markdown table, footnotes) of one table CSV's frame."""
    frame = frame.drop(columns=[c for c in HIDDEN_COLUMNS if c in frame.columns])
    constant = constant_protocol(frame)
    same_rows = "our rows" if "source" in frame.columns else "every row"
    line = ("Same for " + same_rows + ": " + "; ".join(f"{k} {v}" for k, v in constant.items() if v) + "."
            if any(constant.values()) else "")
    frame = frame.drop(columns=list(constant))
    notes, footnotes = ([], [])
    if "note" in frame.columns:
        notes, footnotes = _footnotes(frame["note"])
        frame = frame.drop(columns=["note"])
    columns = side_by_side(list(frame.columns))
    integer = {c: _integer_column(frame[c]) for c in columns}
    if "rho" in frame.columns:  # thresholds as written in the config: 1, 0.985, 0.8
        frame["rho"] = [v if _empty(v) else f"{float(v):g}" for v in frame["rho"]]
    header = columns + (["note"] if footnotes else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i, row in enumerate(frame[columns].itertuples(index=False)):
        cells = [format_value(v, integer[c]) for c, v in zip(columns, row, strict=True)]
        lines.append("| " + " | ".join(cells + ([notes[i]] if footnotes else [])) + " |")
    return line, "\n".join(lines), footnotes


def render_markdown_file(out_dir: Path, files: dict[int, str], titles: dict[int, str],
                         captions: dict[int, str], preset: str) -> str:
    parts = [f"# Layer Cascade reproduction: tables (preset `{preset}`)", "",
             "Columns `paper_*` are the published numbers (results/paper/), `diff_*` = ours - paper, "
             "left empty when the two were not made the same way (see the notes). Empty cells of ours "
             "were not produced by this run. The CSVs beside this file hold every column.", ""]
    for number, name in files.items():
        path = out_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} missing; run `lc tables --out-dir {out_dir}` first")
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        line, table, footnotes = render_table(frame)
        parts += [f"## {titles[number]}", "", f"`{name}`. {captions.get(number, '')}".rstrip(), ""]
        if line:
            parts += [line, ""]
        parts += [table, ""]
        if footnotes:
            parts += ["Notes:", "", *footnotes, ""]
    return "\n".join(parts)
