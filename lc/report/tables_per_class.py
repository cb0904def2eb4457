"""Tables 4 and 5: per-class IoU of LC on VOC and Cityscapes (our val beside the paper's test rows)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lc.report import outputs
from lc.report.paper import load_paper_table
from lc.report.results import Run, as_number, difference, rounded
from lc.report.table_common import (
    CITED,
    PER_CLASS_PROTOCOL,
    ROUTING_MASKS,
    join_notes,
    missing,
    protocol,
    split_mismatch,
)


def _per_class_row(ev: dict, classes: list[str]) -> dict:
    names = ev.get("class_names") or []
    ious = ev.get("per_class_iou") or []
    by_name = dict(zip(names, ious, strict=False))
    return {c: rounded(by_name.get(c)) for c in classes}


def _export_info(run: Run, archive: str) -> tuple[str, str]:
    """(archive path under results/<preset>/, note) of a test-server submission (outputs.*_ARCHIVE)."""
    meta = run.json(outputs.export_summary(archive))
    if run.path(archive).exists():
        count = (meta or {}).get("num_images")
        split = (meta or {}).get("train_split") or (meta or {}).get("trained_on")
        made = f"{count} test predictions for the server" if count else ""
        return str(run.path(archive)), join_notes(made, f"model trained on {split}" if split else "")
    return "", missing(archive, "rule export")


def _archive_protocol(run: Run, archive: str) -> tuple[bool, bool] | None:
    """(multi-scale, CRF) of an exported archive, from its summary JSON."""
    meta = run.json(outputs.export_summary(archive))
    if meta is None:
        return None
    used = meta.get("protocol", {})
    return len(used.get("scales", [1.0])) > 1, bool(used.get("crf", False))


def _per_class_table(run: Run, number: int, dataset: str, archive: str, protocols: Iterable,
                     paper_dir: str | Path | None) -> pd.DataFrame:
    paper = load_paper_table(number, paper_dir)
    classes = [c for c in paper.columns if c not in ("method", "subsampled", "miou")]
    archive_path, archive_note = _export_info(run, archive)
    if dataset == "voc" and not archive_path:
        spec = run.cfg["data"]["archives"].get("voc2012_test") or {}
        if not (run.cfg["data"].get("synthetic") or spec.get("url") or spec.get("md5")):
            archive_note = "VOC 2012 test images not configured (data.archives.voc2012_test), export skipped"
    archive_protocol = _archive_protocol(run, archive)  # the archive goes with the row of its protocol
    rows = []
    paper_lc = paper[paper["method"] == "LC"].iloc[0]
    best = None
    for multi_scale, crf in protocols:
        ev = run.eval(dataset, "lc", "val", multi_scale, crf)
        label = "LC (ours)" + (" multi-scale" if multi_scale else "") + (" + CRF" if crf else "")
        row = {"method": label, "source": "reproduced", "evaluated_split": "val"}
        row.update(_per_class_row(ev, classes) if ev else {c: None for c in classes})
        row["miou"] = rounded(ev and ev.get("miou"))
        if "subsampled" in paper.columns:
            row["subsampled"] = "no"
        used = protocol(ev, run, dataset, "val", ROUTING_MASKS)
        row.update({k: used[k] for k in PER_CLASS_PROTOCOL})
        row["train_split"] = (run.train_done(dataset, "lc") or {}).get("split")
        row["submission_archive"] = archive_path if archive_protocol == (multi_scale, crf) else ""
        row["note"] = join_notes(
            "" if ev else missing(run.eval_path(dataset, "lc", "val", multi_scale, crf), "rule evaluate"),
            "test labels are server-only: our row is val, the paper's LC row is test", archive_note)
        rows.append(row)
        if ev is not None:
            best = row
    for record in paper.to_dict("records"):
        source = "paper (published)" if record["method"] == "LC" else CITED
        row = {"method": f"{record['method']} (paper)", "source": source, "evaluated_split": "test"}
        row.update({c: as_number(record[c]) for c in classes})
        row["miou"] = as_number(record["miou"])
        if "subsampled" in paper.columns:
            row["subsampled"] = record["subsampled"]
        row["note"] = ""
        rows.append(row)
    diff = {"method": "diff: ours - LC (paper)", "source": "computed", "evaluated_split": "val - test"}
    across = split_mismatch(best["evaluated_split"] if best else None, "test")
    for column in [*classes, "miou"]:
        diff[column] = difference(best[column], paper_lc[column]) if best and not across else None
    diff["note"] = (f"'{best['method']}' against the published LC row: {across}" if best and across
                    else f"from '{best['method']}' against the published LC row" if best
                    else "no evaluation of LC to compare")
    rows.append(diff)
    frame = pd.DataFrame(rows)
    front = ["method", "source", "evaluated_split"]
    front += ["subsampled"] if "subsampled" in paper.columns else []
    rest = [c for c in frame.columns if c not in front]
    return frame[front + rest]


def build_table4(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Per-class IoU of LC on VOC (our val beside the paper's test rows; others cited)."""
    return _per_class_table(run, 4, "voc", outputs.VOC_TEST_ARCHIVE,
                            [(False, False), (True, False), (True, True)], paper_dir)


def build_table5(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Per-class IoU of LC on Cityscapes (our val beside the paper's test rows; others cited): single
    scale, and the export's protocol (evaluate.cityscapes_export.protocol) when that is another."""
    export = (run.cfg["evaluate"].get("cityscapes_export") or {}).get("protocol", "single")
    protocols = dict.fromkeys([(False, False), CITYSCAPES_PROTOCOLS[export]])
    return _per_class_table(run, 5, "cityscapes", outputs.CITYSCAPES_TEST_ARCHIVE, list(protocols), paper_dir)


# evaluate.cityscapes_export.protocol -> (multi-scale, CRF)
CITYSCAPES_PROTOCOLS = {"single": (False, False), "ms": (True, False), "ms_crf": (True, True)}
