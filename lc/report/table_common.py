"""Machinery shared by the table builders: protocol columns, notes, which model made a sweep row.

Column conventions (every table): ours, `paper_<x>` (published, only from lc.report.paper) and
`diff_<x>` = ours - paper. A difference stays empty, with a note, when the two were not made the same
way (device, image size, network size, protocol).
"""

from __future__ import annotations

from lc.report import outputs
from lc.report.paper import PAPER_SPEED_PROTOCOL
from lc.report.results import Run, as_int

CITED = "cited from the paper, not reproduced"
ROUTING_MASKS = "model (rho routing of its own stage probabilities)"
PER_CLASS_PROTOCOL = ("preset", "device", "num_images", "scales", "fusion", "flip", "crf", "rho")


def scales_text(scales) -> str:
    return " ".join(f"{float(s):g}" for s in scales)


def protocol(ev: dict | None, run: Run, dataset: str, split: str, mask_source: str) -> dict:
    """Protocol columns of one evaluation (or of the settings it would have used when missing).

    fusion: how the multi-scale views were combined (the eval JSON's, else evaluate.fusion); empty
    for a single view.
    """
    cfg_eval = run.cfg["evaluate"]
    if ev is not None:
        used = ev.get("protocol", {})
        scales = used.get("scales", [1.0])
        multi_view = len(scales) > 1 or bool(used.get("flip", False))
        return {
            "preset": ev.get("preset", run.cfg["preset"]),
            "dataset": dataset,
            "split": ev.get("split", split),
            "device": ev.get("device"),
            "num_images": as_int(ev.get("num_images")),
            "scales": scales_text(scales),
            "fusion": (used.get("fusion") or cfg_eval.get("fusion") or "mean") if multi_view else None,
            "flip": bool(used.get("flip", False)),
            "crf": bool(used.get("crf", False)),
            "rho": ev.get("rho"),
            "mask_source": mask_source,
        }
    return {
        "preset": run.cfg["preset"], "dataset": dataset, "split": split, "device": None,
        "num_images": None, "scales": None, "fusion": None, "flip": None, "crf": None,
        "rho": cfg_eval["rho"], "mask_source": mask_source,
    }


def split_mismatch(ours: str | None, paper: str) -> str:
    """'' when our number and the paper's were made on the same split; else why no difference is given."""
    if ours == paper:
        return ""
    return (f"no difference: our number is {ours or 'unknown'}, the paper's {paper} (test labels are "
            "server-only), so the two are shown side by side only")


def join_notes(*notes: str | None) -> str:
    """One `note` cell; tables.md splits it at '; ' into footnotes, so a single note never holds '; '."""
    return "; ".join(n for n in notes if n)


def missing(rel: str, rule_hint: str) -> str:
    return f"{rel} missing ({rule_hint})"


def sweep_training(cfg: dict) -> str:
    """How the rows of the rho sweep were made: one model per rho, or one model re-thresholded."""
    if cfg["evaluate"].get("sweep_retrain", False):
        return "one model per rho (evaluate.sweep_retrain)"
    return f"one LC model (trained at rho {float(cfg['train']['rho']):g}) re-thresholded at each rho"


def sweep_model(cfg: dict, rho: float, sweep_row: dict | None = None) -> str:
    """The run folder whose model made the sweep row at `rho` (the CSV's own `checkpoint` if it has one).

    Per-rho models (evaluate.sweep_retrain): rho = 1 is the DSN run (LC at rho = 1 is DSN), train.rho
    is the main LC run, any other rho its own lc_rho<rho> run. Otherwise the main LC run, re-thresholded.
    """
    if sweep_row and sweep_row.get("checkpoint") and str(sweep_row["checkpoint"]) != "nan":
        return str(sweep_row["checkpoint"])
    main = outputs.run_dir("voc", "lc")
    if not cfg["evaluate"].get("sweep_retrain", False):
        return f"{main} re-thresholded at rho {float(rho):g}"
    if abs(float(rho) - 1.0) < 1e-9:
        return outputs.run_dir("voc", "dsn")
    if abs(float(rho) - float(cfg["train"]["rho"])) < 1e-9:
        return main
    return outputs.run_dir("voc", outputs.rho_run_name(rho))


def speed_mismatch(device, image_size) -> str:
    """Why our time cannot be subtracted from the paper's ('' when device and image size match)."""
    paper_device, paper_size = PAPER_SPEED_PROTOCOL["device"], PAPER_SPEED_PROTOCOL["image_size"]
    same_device = device is not None and paper_device.lower() in str(device).lower()
    size = as_int(image_size)
    if same_device and size == paper_size:
        return ""
    ours = f"{device or 'unknown device'} at " + (f"{size} px" if size is not None else "an unrecorded size")
    return f"no time difference: ours {ours}, the paper's {paper_device} at {paper_size} px"
