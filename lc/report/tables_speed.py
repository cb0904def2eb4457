"""Tables 3 and 6: speed (ms, FPS, parameters) beside accuracy, and the state-of-the-art comparison."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lc.report import outputs
from lc.report.paper import load_paper_table
from lc.report.results import Run, as_int, as_number, difference, rounded
from lc.report.table_common import (
    CITED,
    ROUTING_MASKS,
    join_notes,
    missing,
    protocol,
    speed_mismatch,
    split_mismatch,
    sweep_model,
    sweep_training,
)

# Table 3 rows: paper method name -> `method` in bench/table3_speed.csv.
SPEED_METHODS = {"DeepLab-v2": "deeplab_v2", "SegNet": "segnet", "LC": "lc", "LC (fast)": "lc_fast"}


# --- Table 3 ---------------------------------------------------------------------------------
def _sweep_miou(run: Run, rho: float) -> tuple[float | None, str, str]:
    """(mIoU, model that made it, note) of the sweep row at rho."""
    rel = outputs.sweep_csv()
    sweep = run.csv(rel)
    if sweep is None:
        return None, "", missing(rel, "rule sweep")
    match = sweep[(sweep["rho"].astype(float) - rho).abs() < 1e-6]
    if match.empty:
        return None, "", f"rho {rho:g} (evaluate.fast_rho) not in the sweep"
    row = match.iloc[0].to_dict()
    return rounded(row["miou"]), sweep_model(run.cfg, rho, row), ""


def build_table3(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """mIoU, ms and FPS of DeepLab-v2, SegNet (mIoU cited), LC, LC fast and the dense IRNet."""
    paper = load_paper_table(3, paper_dir).set_index("method")
    bench_rel = outputs.bench("models")
    bench = run.csv(bench_rel)
    bench_by_method = {} if bench is None else {r["method"]: r for r in bench.to_dict("records")}
    rows = []
    for method, key in [*SPEED_METHODS.items(), ("IRNet (dense)", "irnet")]:
        pub = paper.loc[method] if method in paper.index else None
        timing = bench_by_method.get(key)
        notes, model, ev = [], "", None
        if key in ("deeplab_v2", "segnet"):
            miou, miou_source = as_number(pub["miou"]), CITED
        elif key == "lc_fast":
            fast_rho = float(run.cfg["evaluate"]["fast_rho"])
            miou, model, note = _sweep_miou(run, fast_rho)
            miou_source = (f"reproduced (sweep at evaluate.fast_rho {fast_rho:g}, VOC val; "
                           f"{sweep_training(run.cfg)})")
            notes.append(note)
        else:
            variant = "lc" if key == "lc" else "irnet"
            ev = run.eval("voc", variant)
            miou, miou_source = rounded(ev and ev.get("miou")), "reproduced (VOC val)"
            model = outputs.run_dir("voc", variant)
            if ev is None:
                notes.append(missing(run.eval_path("voc", variant), "rule evaluate"))
        if timing is None:
            notes.append(missing(bench_rel, "rule bench_models") if bench is None
                         else f"{key} not in bench.models of preset {run.cfg['preset']}")
        elif not bool(timing.get("full_size", True)):
            notes.append("timed at the preset's reduced network size, not the full architecture")
        timing = timing or {}
        row = {
            "method": method, "bench_method": key, "model": model,
            "miou": miou, "paper_miou": as_number(pub["miou"]) if pub is not None else None,
            "ms": rounded(timing.get("ms_median")),
            "paper_ms": as_number(pub["ms"]) if pub is not None else None,
            "fps": rounded(timing.get("fps")),
            "paper_fps": as_number(pub["fps"]) if pub is not None else None,
            "miou_source": miou_source,
            "ms_p25": rounded(timing.get("ms_p25")), "ms_p75": rounded(timing.get("ms_p75")),
            "params_m": rounded(timing.get("params_m")),
            "stage1_pct": rounded(timing.get("stage1_pct")), "stage2_pct": rounded(timing.get("stage2_pct")),
        }
        row["diff_miou"] = None if miou_source == CITED else difference(row["miou"], row["paper_miou"])
        mismatch = speed_mismatch(timing.get("device"), timing.get("image_size")) if timing else ""
        comparable = pub is not None and timing and not mismatch
        row["diff_ms"] = difference(row["ms"], row["paper_ms"]) if comparable else None
        row["diff_fps"] = difference(row["fps"], row["paper_fps"]) if comparable else None
        if pub is None:
            notes.append("not in the paper's Table 3 (our dense reference)")
        elif timing and mismatch:
            notes.append(mismatch)
        used = protocol(ev, run, "voc", "val", ROUTING_MASKS) if ev else {}
        row.update({
            "preset": run.cfg["preset"], "dataset": "voc", "split": "val",
            "device": timing.get("device"), "image_size": as_int(timing.get("image_size")),
            "batch_size": as_int(timing.get("batch_size")), "rho": as_number(timing.get("rho")),
            "full_size": timing.get("full_size"), "runs": as_int(timing.get("runs")),
            "scales": used.get("scales", "1"), "flip": used.get("flip", False), "crf": used.get("crf", False),
            "mask_source": timing.get("mask_source"),
            "note": join_notes(*notes),
        })
        rows.append(row)
    return pd.DataFrame(rows)


# --- Table 6 ---------------------------------------------------------------------------------
def _fps_row(table6: pd.DataFrame | None, multi_scale: bool, crf: bool) -> dict | None:
    if table6 is None:
        return None
    setting = "multi_scale_crf" if crf else "multi_scale" if multi_scale else "single_scale"
    return next((row for row in table6.to_dict("records") if row.get("setting") == setting), None)


def _timed_other_views(timing: dict | None, used: dict) -> str:
    """A note when the FPS row timed other scales than the evaluation that made the mIoU."""
    if not timing or "scales" not in timing or used.get("scales") is None:
        return ""
    timed = " ".join(f"{float(s):g}" for s in str(timing["scales"]).split())
    return "" if timed == used["scales"] else f"FPS timed at scales {timed}, mIoU at {used['scales']}"


PAPER_SPLIT = "test"  # Tables 4-6: the paper's mIoU is on the test servers


def build_table6(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Params, COCO, multi-scale, CRF, FPS and mIoU of the three IRNet-LC settings (others cited)."""
    paper = load_paper_table(6, paper_dir)
    fps_rel, speed_rel = outputs.bench("table6"), outputs.bench("models")
    table6 = run.csv(fps_rel)
    speed = run.csv(speed_rel)
    lc_speed = None if speed is None else next(
        (r for r in speed.to_dict("records") if r["method"] == "lc"), None)
    published = paper[paper["method"] == "IRNet-LC"].to_dict("records")
    paper_single_fps = next((as_number(p["fps"]) for p in published
                             if p["multi_scale"] != "yes" and p["crf"] != "yes"), None)
    rows = []
    for pub in published:
        multi_scale, crf = pub["multi_scale"] == "yes", pub["crf"] == "yes"
        ev = run.eval("voc", "lc", "val", multi_scale, crf)
        timing = _fps_row(table6, multi_scale, crf)
        used = protocol(ev, run, "voc", "val", ROUTING_MASKS)
        notes = []
        if ev is None:
            notes.append(missing(run.eval_path("voc", "lc", "val", multi_scale, crf), "rule evaluate"))
        if timing is None:
            notes.append(missing(fps_rel, "rule bench_table6") if table6 is None
                         else f"setting not in {fps_rel}")
        notes.append(_timed_other_views(timing, used))
        full_size = lc_speed is not None and bool(lc_speed.get("full_size", True))
        if lc_speed is None:
            notes.append(missing(speed_rel, "rule bench_models") + ": no parameter count")
        elif not full_size:
            notes.append("params of the preset's reduced network: no parameter difference")
        elif run.cfg["model"].get("width_mult", 1.0) != 1.0:
            notes.append("params and FPS: the full-size network, mIoU: the preset's reduced network")
        image_size = as_int((timing or {}).get("image_size"))
        device = (timing or {}).get("device") or used["device"]
        mismatch = speed_mismatch(device, image_size) if timing else ""
        notes.append(mismatch.replace("time difference", "FPS difference"))
        row = {
            "method": "IRNet-LC (ours)", "source": "reproduced", "backbone": "IRNet",
            "coco": "no", "multi_scale": pub["multi_scale"], "crf": pub["crf"],
            "params_m": rounded(lc_speed and lc_speed.get("params_m")),
            "paper_params_m": as_number(pub["params_m"]),
            "fps": rounded(timing and timing.get("fps")), "paper_fps": as_number(pub["fps"]),
            "miou": rounded(ev and ev.get("miou")), "paper_miou": as_number(pub["miou"]),
            "ms": rounded(timing and timing.get("ms_median")),
            # cost relative to single scale, measured in interleaved rounds; the paper's from its FPS
            "time_vs_single_scale": rounded(timing and timing.get("time_vs_single_scale")),
            "paper_time_vs_single_scale": (rounded(paper_single_fps / as_number(pub["fps"]))
                                           if paper_single_fps and as_number(pub["fps"]) else None),
        }
        row["diff_params_m"] = difference(row["params_m"], row["paper_params_m"]) if full_size else None
        row["diff_fps"] = difference(row["fps"], row["paper_fps"]) if timing and not mismatch else None
        row.update({k: used[k] for k in ("preset", "split", "device", "num_images", "scales", "fusion",
                                          "flip")})
        row["paper_split"] = PAPER_SPLIT
        across = split_mismatch(row["split"] or "val", PAPER_SPLIT)
        row["diff_miou"] = None if across else difference(row["miou"], row["paper_miou"])
        row["device"] = row["device"] or device
        row["image_size"] = image_size
        row["note"] = join_notes(f"mIoU {across}" if across else "", *notes)
        rows.append(row)
    for pub in paper[paper["method"] != "IRNet-LC"].to_dict("records"):
        row = {"method": f"{pub['method']} (paper)", "source": CITED, "backbone": pub["backbone"],
               "coco": pub["coco"] or "", "multi_scale": pub["multi_scale"] or "", "crf": pub["crf"] or "",
               "params_m": as_number(pub["params_m"]), "fps": as_number(pub["fps"]),
               "miou": as_number(pub["miou"]), "note": ""}
        rows.append(row)
    return pd.DataFrame(rows)
