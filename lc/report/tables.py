"""The paper's six tables, rebuilt from this run's outputs beside the published numbers.

Every table has our columns, the paper's (prefixed `paper_`, only ever from
`lc.report.paper.load_paper_table`), the difference (`diff_` = ours - paper) and protocol columns saying
how each number was made. A value the run did not produce stays empty and `note` says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lc.data.io import write_text_atomic
from lc.report.paper import load_paper_table
from lc.report.results import Run, as_number, difference, rounded

TABLE_FILES = {
    1: "table1_rho_sweep.csv",
    2: "table2_ablation.csv",
    3: "table3_speed.csv",
    4: "table4_voc_per_class.csv",
    5: "table5_cityscapes_per_class.csv",
    6: "table6_sota.csv",
}
TABLE_TITLES = {
    1: "Table 1: stage shares and mIoU over rho (VOC val)",
    2: "Table 2: ablation (VOC val)",
    3: "Table 3: speed at the benchmark image size",
    4: "Table 4: per-class IoU, PASCAL VOC 2012",
    5: "Table 5: per-class IoU, Cityscapes",
    6: "Table 6: IRNet-LC settings against the state of the art (VOC)",
}
# Table 2 rows: paper method name -> our variant (runs/voc/<variant>/).
ABLATION_VARIANTS = {
    "IRNet": "irnet",
    "DSN": "dsn",
    "DSN + Dropout": "dsn_dropout",
    "Model Cascade (MC)": "mc",
    "Layer Cascade (LC)": "lc",
}
# Table 3 rows: paper method name -> `method` in bench/table3_speed.csv.
SPEED_METHODS = {"DeepLab-v2": "deeplab_v2", "SegNet": "segnet", "LC": "lc", "LC (fast)": "lc_fast"}
CITED = "cited from the paper, not reproduced"
ROUTING_MASKS = "model (rho routing of its own stage probabilities)"
PER_CLASS_PROTOCOL = ("preset", "device", "num_images", "scales", "flip", "crf", "rho")


def _protocol(ev: dict | None, run: Run, dataset: str, split: str, mask_source: str) -> dict:
    """Protocol columns of one evaluation (or of the settings it would have used when missing)."""
    cfg_eval = run.cfg["evaluate"]
    if ev is not None:
        protocol = ev.get("protocol", {})
        scales = protocol.get("scales", [1.0])
        return {
            "preset": ev.get("preset", run.cfg["preset"]),
            "dataset": dataset,
            "split": ev.get("split", split),
            "device": ev.get("device"),
            "num_images": ev.get("num_images"),
            "scales": " ".join(f"{s:g}" for s in scales),
            "flip": bool(protocol.get("flip", False)),
            "crf": bool(protocol.get("crf", False)),
            "rho": ev.get("rho"),
            "mask_source": mask_source,
        }
    return {
        "preset": run.cfg["preset"], "dataset": dataset, "split": split, "device": None,
        "num_images": None, "scales": None, "flip": None, "crf": None, "rho": cfg_eval["rho"],
        "mask_source": mask_source,
    }


def _join_notes(*notes: str | None) -> str:
    return "; ".join(n for n in notes if n)


def _missing(rel: str, rule_hint: str) -> str:
    return f"{rel} missing ({rule_hint})"


# --- Table 1 ---------------------------------------------------------------------------------
def build_table1(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """rho, % decided at stages 1 and 2 (and 3), mIoU, against Table 1."""
    paper = load_paper_table(1, paper_dir)
    sweep_rel = "runs/voc/lc/sweep_val.csv"
    sweep = run.csv(*sweep_rel.split("/"))
    retrain = bool(run.cfg["evaluate"].get("sweep_retrain", False))
    training = ("one LC model per rho" if retrain
                else f"one LC model (train.rho {run.cfg['train']['rho']:g}), re-thresholded")
    ours = {}
    if sweep is not None:
        for row in sweep.to_dict("records"):
            ours[round(float(row["rho"]), 3)] = row
    rhos = sorted(set(ours) | {round(float(r), 3) for r in paper["rho"]}, reverse=True)
    paper_by_rho = {round(float(r["rho"]), 3): r for r in paper.to_dict("records")}
    rows = []
    for rho in rhos:
        mine, pub = ours.get(rho), paper_by_rho.get(rho)
        note = None
        if mine is None:
            note = (_missing(sweep_rel, "rule sweep") if sweep is None
                    else f"rho {rho:g} not in evaluate.rho_sweep of preset {run.cfg['preset']}")
        elif pub is None:
            note = "rho not in the paper's Table 1"
        row = {
            "rho": rho,
            "stage1_pct": rounded(mine and mine.get("stage1_pct")),
            "stage2_pct": rounded(mine and mine.get("stage2_pct")),
            "stage3_pct": rounded(mine and mine.get("stage3_pct")),
            "miou": rounded(mine and mine.get("miou")),
            "ms_per_image": rounded(mine and mine.get("ms_per_image")),
            "paper_stage1_pct": as_number(pub and pub["stage1_pct"]),
            "paper_stage2_pct": as_number(pub and pub["stage2_pct"]),
            "paper_miou": as_number(pub and pub["miou"]),
        }
        row["diff_stage1_pct"] = difference(row["stage1_pct"], row["paper_stage1_pct"])
        row["diff_stage2_pct"] = difference(row["stage2_pct"], row["paper_stage2_pct"])
        row["diff_miou"] = difference(row["miou"], row["paper_miou"])
        row.update({
            "preset": (mine or {}).get("preset", run.cfg["preset"]), "dataset": "voc", "split": "val",
            "device": (mine or {}).get("device"), "scales": "1", "flip": False, "crf": False,
            "mask_source": ROUTING_MASKS, "training": training, "note": note or "",
        })
        rows.append(row)
    return pd.DataFrame(rows)


# --- Table 2 ---------------------------------------------------------------------------------
def build_table2(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """The ablation: IRNet, DSN, DSN + Dropout, Model Cascade, LC on VOC val."""
    paper = load_paper_table(2, paper_dir).set_index("method")["miou"]
    rows = []
    for method, variant in ABLATION_VARIANTS.items():
        ev = run.eval("voc", variant)
        share = (ev or {}).get("stage_share") or [None, None, None]
        routed = variant in ("lc", "mc")  # dsn_dropout routes only in training
        row = {
            "method": method, "variant": variant,
            "miou": rounded(ev and ev.get("miou")),
            "pixel_accuracy": rounded(ev and ev.get("pixel_accuracy")),
            "stage1_pct": rounded(share[0] * 100) if routed and share[0] is not None else None,
            "stage2_pct": rounded(share[1] * 100) if routed and share[1] is not None else None,
            "stage3_pct": rounded(share[2] * 100) if routed and share[2] is not None else None,
            "paper_miou": as_number(paper.get(method)),
        }
        row["diff_miou"] = difference(row["miou"], row["paper_miou"])
        row.update(_protocol(ev, run, "voc", "val", ROUTING_MASKS if routed else "none (all pixels)"))
        row["eval_file"] = run.eval_path("voc", variant) if ev else ""
        row["note"] = "" if ev else _missing(run.eval_path("voc", variant), f"rule evaluate of {variant}")
        rows.append(row)
    return pd.DataFrame(rows)


# --- Table 3 ---------------------------------------------------------------------------------
def _sweep_miou(run: Run, rho: float) -> tuple[float | None, str]:
    sweep = run.csv("runs", "voc", "lc", "sweep_val.csv")
    if sweep is None:
        return None, "runs/voc/lc/sweep_val.csv missing (rule sweep)"
    match = sweep[(sweep["rho"].astype(float) - rho).abs() < 1e-6]
    if match.empty:
        return None, f"rho {rho:g} (evaluate.fast_rho) not in the sweep"
    return rounded(match.iloc[0]["miou"]), ""


def build_table3(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """mIoU, ms and FPS of DeepLab-v2, SegNet (mIoU cited), LC, LC fast and the dense IRNet."""
    paper = load_paper_table(3, paper_dir).set_index("method")
    bench_rel = "bench/table3_speed.csv"
    bench = run.csv(*bench_rel.split("/"))
    bench_by_method = {} if bench is None else {r["method"]: r for r in bench.to_dict("records")}
    rows = []
    for method, key in [*SPEED_METHODS.items(), ("IRNet (dense)", "irnet")]:
        pub = paper.loc[method] if method in paper.index else None
        timing = bench_by_method.get(key)
        notes = []
        if key in ("deeplab_v2", "segnet"):
            miou, miou_source = as_number(pub["miou"]), CITED
        elif key == "lc_fast":
            miou, note = _sweep_miou(run, float(run.cfg["evaluate"]["fast_rho"]))
            miou_source = "reproduced (sweep, VOC val)"
            notes.append(note)
        else:
            variant = "lc" if key == "lc" else "irnet"
            ev = run.eval("voc", variant)
            miou, miou_source = rounded(ev and ev.get("miou")), "reproduced (VOC val)"
            if ev is None:
                notes.append(_missing(run.eval_path("voc", variant), "rule evaluate"))
        if timing is None:
            notes.append(_missing(bench_rel, "rule bench_models") if bench is None
                         else f"{key} not in bench.models of preset {run.cfg['preset']}")
        elif not bool(timing.get("full_size", True)):
            notes.append("timed at the preset's reduced network size, not the full architecture")
        timing = timing or {}
        row = {
            "method": method, "bench_method": key,
            "miou": miou, "miou_source": miou_source,
            "ms": rounded(timing.get("ms_median")), "ms_p25": rounded(timing.get("ms_p25")),
            "ms_p75": rounded(timing.get("ms_p75")), "fps": rounded(timing.get("fps")),
            "params_m": rounded(timing.get("params_m")),
            "stage1_pct": rounded(timing.get("stage1_pct")), "stage2_pct": rounded(timing.get("stage2_pct")),
            "paper_miou": as_number(pub["miou"]) if pub is not None else None,
            "paper_ms": as_number(pub["ms"]) if pub is not None else None,
            "paper_fps": as_number(pub["fps"]) if pub is not None else None,
        }
        row["diff_miou"] = None if miou_source == CITED else difference(row["miou"], row["paper_miou"])
        row["diff_ms"] = difference(row["ms"], row["paper_ms"])
        row["diff_fps"] = difference(row["fps"], row["paper_fps"])
        if pub is None:
            notes.append("not in the paper's Table 3 (our dense reference)")
        row.update({
            "preset": run.cfg["preset"], "dataset": "voc", "split": "val",
            "device": timing.get("device"), "image_size": timing.get("image_size"),
            "batch_size": timing.get("batch_size"), "rho": as_number(timing.get("rho")),
            "full_size": timing.get("full_size"), "runs": timing.get("runs"),
            "scales": "1", "flip": False, "crf": False, "mask_source": timing.get("mask_source"),
            "note": _join_notes(*notes),
        })
        rows.append(row)
    return pd.DataFrame(rows)


# --- Tables 4 and 5 --------------------------------------------------------------------------
def _per_class_row(ev: dict, classes: list[str]) -> dict:
    names = ev.get("class_names") or []
    ious = ev.get("per_class_iou") or []
    by_name = dict(zip(names, ious, strict=False))
    return {c: rounded(by_name.get(c)) for c in classes}


def _export_info(run: Run, archive: str) -> tuple[str, str]:
    """(archive path relative to results/<preset>/, note) of a test-server submission."""
    rel = Path("export", archive)
    meta = run.json("export", Path(archive).name.split(".")[0] + ".json")
    if run.path(*rel.parts).exists():
        count = (meta or {}).get("num_images")
        return str(run.root / rel), (f"{count} test predictions for the server" if count else "")
    return "", f"export/{archive} missing (rule export)"


def _archive_protocol(run: Run, archive: str) -> tuple[bool, bool] | None:
    """(multi-scale, CRF) of an exported archive, from its summary JSON."""
    meta = run.json("export", Path(archive).name.split(".")[0] + ".json")
    if meta is None:
        return None
    protocol = meta.get("protocol", {})
    return len(protocol.get("scales", [1.0])) > 1, bool(protocol.get("crf", False))


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
        protocol = _protocol(ev, run, dataset, "val", ROUTING_MASKS)
        row.update({k: protocol[k] for k in PER_CLASS_PROTOCOL})
        row["submission_archive"] = archive_path if archive_protocol == (multi_scale, crf) else ""
        row["note"] = _join_notes(
            "" if ev else _missing(run.eval_path(dataset, "lc", "val", multi_scale, crf), "rule evaluate"),
            "test labels are server-only: our row is val, the paper's LC row is test", archive_note)
        rows.append(row)
        if ev is not None:
            best = row
    for record in paper.to_dict("records"):
        source = "paper" if record["method"] == "LC" else CITED
        row = {"method": f"{record['method']} (paper)", "source": source, "evaluated_split": "test"}
        row.update({c: as_number(record[c]) for c in classes})
        row["miou"] = as_number(record["miou"])
        if "subsampled" in paper.columns:
            row["subsampled"] = record["subsampled"]
        row["note"] = ""
        rows.append(row)
    diff = {"method": "diff: ours - LC (paper)", "source": "computed", "evaluated_split": "val - test"}
    for column in [*classes, "miou"]:
        diff[column] = difference(best[column], paper_lc[column]) if best else None
    diff["note"] = (f"from '{best['method']}'" if best else "no evaluation of LC to compare")
    rows.append(diff)
    frame = pd.DataFrame(rows)
    front = ["method", "source", "evaluated_split"]
    front += ["subsampled"] if "subsampled" in paper.columns else []
    rest = [c for c in frame.columns if c not in front]
    return frame[front + rest]


def build_table4(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Per-class IoU of LC on VOC (our val beside the paper's test rows; others cited)."""
    return _per_class_table(run, 4, "voc", "voc_test_comp6.tar.gz",
                            [(False, False), (True, False), (True, True)], paper_dir)


def build_table5(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Per-class IoU of LC on Cityscapes (our val beside the paper's test rows; others cited)."""
    return _per_class_table(run, 5, "cityscapes", "cityscapes_test.zip", [(False, False)], paper_dir)


# --- Table 6 ---------------------------------------------------------------------------------
def _fps_row(table6: pd.DataFrame | None, multi_scale: bool, crf: bool) -> dict | None:
    if table6 is None:
        return None
    setting = "multi_scale_crf" if crf else "multi_scale" if multi_scale else "single_scale"
    return next((row for row in table6.to_dict("records") if row.get("setting") == setting), None)


def build_table6(run: Run, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Params, COCO, multi-scale, CRF, FPS and mIoU of the three IRNet-LC settings (others cited)."""
    paper = load_paper_table(6, paper_dir)
    fps_rel, speed_rel = "bench/table6_fps.csv", "bench/table3_speed.csv"
    table6 = run.csv(*fps_rel.split("/"))
    speed = run.csv(*speed_rel.split("/"))
    lc_speed = None if speed is None else next(
        (r for r in speed.to_dict("records") if r["method"] == "lc"), None)
    ours_rows = paper[paper["method"] == "IRNet-LC"].to_dict("records")
    rows = []
    for pub in ours_rows:
        multi_scale, crf = pub["multi_scale"] == "yes", pub["crf"] == "yes"
        ev = run.eval("voc", "lc", "val", multi_scale, crf)
        timing = _fps_row(table6, multi_scale, crf)
        notes = []
        if ev is None:
            notes.append(_missing(run.eval_path("voc", "lc", "val", multi_scale, crf), "rule evaluate"))
        if timing is None:
            notes.append(_missing(fps_rel, "rule bench_table6") if table6 is None
                         else "setting not in bench/table6_fps.csv")
        if lc_speed is None:
            notes.append(_missing(speed_rel, "rule bench_models") + ": no parameter count")
        elif not bool(lc_speed.get("full_size", True)):
            notes.append("params of the preset's reduced network")
        elif run.cfg["model"].get("width_mult", 1.0) != 1.0:
            notes.append("params and FPS: the full-size network; mIoU: the preset's reduced network")
        if timing is not None and "image_size" in timing:
            notes.append(f"FPS at {int(timing['image_size'])} x {int(timing['image_size'])}")
        row = {
            "method": "IRNet-LC (ours)", "source": "reproduced", "backbone": "IRNet",
            "params_m": rounded(lc_speed and lc_speed.get("params_m")),
            "coco": "no", "multi_scale": pub["multi_scale"], "crf": pub["crf"],
            "fps": rounded(timing and timing.get("fps")), "ms": rounded(timing and timing.get("ms_median")),
            "miou": rounded(ev and ev.get("miou")),
            "paper_params_m": as_number(pub["params_m"]), "paper_fps": as_number(pub["fps"]),
            "paper_miou": as_number(pub["miou"]),
        }
        for key in ("params_m", "fps", "miou"):
            row[f"diff_{key}"] = difference(row[key], row[f"paper_{key}"])
        protocol = _protocol(ev, run, "voc", "val", ROUTING_MASKS)
        row.update({k: protocol[k] for k in ("preset", "split", "device", "num_images", "scales", "flip")})
        row["device"] = row["device"] or (timing or {}).get("device")
        row["note"] = _join_notes("our mIoU is VOC val; the paper's is VOC test", *notes)
        rows.append(row)
    for pub in paper[paper["method"] != "IRNet-LC"].to_dict("records"):
        row = {"method": f"{pub['method']} (paper)", "source": CITED, "backbone": pub["backbone"],
               "params_m": as_number(pub["params_m"]), "coco": pub["coco"] or "",
               "multi_scale": pub["multi_scale"] or "", "crf": pub["crf"] or "",
               "fps": as_number(pub["fps"]), "miou": as_number(pub["miou"]), "note": ""}
        rows.append(row)
    return pd.DataFrame(rows)


BUILDERS = {1: build_table1, 2: build_table2, 3: build_table3,
            4: build_table4, 5: build_table5, 6: build_table6}


# --- writing ---------------------------------------------------------------------------------
def build_table(number: int, results: str | Path, cfg: dict,
                paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Table `number` (1-6) of the run under `results` (results/<preset>/)."""
    if number not in BUILDERS:
        raise ValueError(f"the paper has Tables 1-6, not {number}")
    return BUILDERS[number](Run(results, cfg), paper_dir)


def write_tables(cfg: dict, out_dir: str | Path, results: str | Path, numbers: Iterable[int] = range(1, 7),
                 paper_dir: str | Path | None = None) -> list[Path]:
    """Write table<n>_*.csv for each number into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for number in numbers:
        frame = build_table(number, results, cfg, paper_dir)
        path = out_dir / TABLE_FILES[number]
        write_text_atomic(path, frame.to_csv(index=False))
        written.append(path)
    return written


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_markdown(out_dir: str | Path, preset: str) -> Path:
    """tables.md: all six table CSVs of out_dir rendered as Markdown, in order."""
    out_dir = Path(out_dir)
    parts = [f"# Layer Cascade reproduction: tables (preset `{preset}`)", "",
             "Columns `paper_*` are the published numbers (results/paper/), `diff_*` = ours - paper; "
             "empty cells were not produced by this run (see `note`).", ""]
    for number, name in TABLE_FILES.items():
        path = out_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} missing; run `lc tables --out-dir {out_dir}` first")
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        parts += [f"## {TABLE_TITLES[number]}", "", f"`{name}`", "", _markdown(frame), ""]
    path = out_dir / "tables.md"
    write_text_atomic(path, "\n".join(parts))
    return path
