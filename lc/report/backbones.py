""""LC across backbones": a table and a figure no paper has (ours, not a reproduction).

For every backbone of `backbones.compare` and data set of `backbones.datasets`: the dense single-loss
network's mIoU and LC's (from DSN, as IRNet's chain) at evaluate.rho, the stage shares there, the
parameters, GFLOPs, and the FLOP-predicted and measured speedup of LC over the same backbone dense
(`lc bench backbone`). The figure draws mIoU against measured speedup over `backbones.rhos`, one line
per backbone. Inputs: per backbone the CSVs of `lc.report.outputs.backbone_file`; a missing one is
named with the command that makes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lc.data.io import write_csv, write_text_atomic
from lc.report import outputs
from lc.report.figure_common import pyplot, save
from lc.report.tables_markdown import render_table

__all__ = ["BACKBONES_COLUMNS", "architecture_text", "build_backbones_table", "write_backbones_outputs"]

BACKBONES_COLUMNS = ["backbone", "architecture", "dataset", "miou_dense", "miou_lc", "diff_miou", "rho",
                     "stage1_pct", "stage2_pct", "stage3_pct", "stage_flop_shares", "lc_params_m",
                     "dense_gflops", "lc_gflops", "predicted_speedup", "measured_speedup", "device",
                     "protocol", "mask_source", "preset"]
PROTOCOL = "single scale, no flip, no CRF, val split"  # + the benchmark's image size, batch and threads


def architecture_text(model_cfg: dict) -> str:
    """A short description of the network a `model:` section (backbone keys merged) builds."""
    name = model_cfg.get("backbone", "irnet")
    if name == "irnet":
        return (f"IRNet width x{model_cfg['width_mult']:g}, blocks "
                f"{'/'.join(str(b) for b in model_cfg['block_counts'])}")
    if name == "resnet":
        parts = [f"timm {model_cfg.get('timm_arch', 'resnet101')} OS8"]
        if model_cfg.get("layers"):
            parts.append(f"layers {'/'.join(str(n) for n in model_cfg['layers'])}")
        if model_cfg.get("channels"):
            parts.append(f"channels {'/'.join(str(n) for n in model_cfg['channels'])}")
        parts.append(f"stage 2 = layer3[:{model_cfg.get('stage2_blocks', 16)}]")
        return ", ".join(parts)
    if name == "convnext":
        parts = [f"timm {model_cfg.get('timm_arch', 'convnext_tiny')} OS8"]
        for key in ("depths", "dims"):
            if model_cfg.get(key):
                parts.append(f"{key} {'/'.join(str(n) for n in model_cfg[key])}")
        return ", ".join(parts)
    return str(name)


def _protocol(speed: pd.Series) -> str:
    return (f"{PROTOCOL}; speed: batch {speed.get('batch_size', '?')}, {speed.get('image_size', '?')} px, "
            f"{speed.get('threads', '?')} threads")


def _read(root: Path, backbone: str, dataset: str, kind: str) -> pd.DataFrame:
    path = root / outputs.backbone_file(backbone, dataset, kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `snakemake backbones` (or its `lc sweep` / "
                                f"`lc bench backbone --backbone {backbone}` step) first")
    return pd.read_csv(path)


def _at(frame: pd.DataFrame, rho: float) -> pd.Series:
    rows = frame[(frame["rho"] - rho).abs() < 1e-9]
    if rows.empty:
        raise ValueError(f"no row at rho {rho} (rows: {sorted(frame['rho'])}); rerun the step with that rho")
    return rows.iloc[0]


def build_backbones_table(cfg: dict, root: str | Path) -> tuple[pd.DataFrame, dict]:
    """(the table at evaluate.rho, {(backbone, dataset): (sweep_lc, bench, dense mIoU)} for the figure)."""
    root = Path(root)
    rho = float(cfg["evaluate"]["rho"])
    settings = cfg["backbones"]
    rows, curves = [], {}
    for dataset in settings.get("datasets", ["voc"]):
        for backbone in settings["compare"]:
            model_cfg = {**cfg["model"], **(settings["models"].get(backbone) or {})}
            dense = _read(root, backbone, dataset, "sweep_dense")
            sweep = _read(root, backbone, dataset, "sweep_lc")
            bench = _read(root, backbone, dataset, "bench")
            at, speed = _at(sweep, rho), _at(bench, rho)
            miou_dense = float(dense["miou"].iloc[0])
            rows.append({"backbone": backbone, "architecture": architecture_text(model_cfg),
                         "dataset": dataset,
                         "miou_dense": miou_dense, "miou_lc": float(at["miou"]),
                         "diff_miou": float(at["miou"]) - miou_dense, "rho": rho,
                         "stage1_pct": at["stage1_pct"], "stage2_pct": at["stage2_pct"],
                         "stage3_pct": at["stage3_pct"], "stage_flop_shares": speed["stage_flop_shares"],
                         "lc_params_m": speed["lc_params_m"], "dense_gflops": speed["dense_gflops"],
                         "lc_gflops": speed["lc_gflops"], "predicted_speedup": speed["predicted_speedup"],
                         "measured_speedup": speed["measured_speedup"], "device": speed["device"],
                         "protocol": _protocol(speed),
                         "mask_source": speed["mask_source"], "preset": cfg["preset"]})
            curves[(backbone, dataset)] = (sweep, bench, miou_dense)
    return pd.DataFrame(rows, columns=BACKBONES_COLUMNS), curves


def _figure(curves: dict, out_dir: Path, preset: str) -> list[Path]:
    plt = pyplot()
    datasets = sorted({d for _, d in curves})
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.0), squeeze=False)
    devices = set()
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for (backbone, ds), (sweep, bench, miou_dense) in curves.items():
            if ds != dataset:
                continue
            merged = sweep.drop(columns=["device"], errors="ignore").merge(
                bench[["rho", "measured_speedup", "device"]], on="rho")
            merged = merged.sort_values("rho", ascending=False)
            devices.update(merged["device"].astype(str))
            line = ax.plot(merged["measured_speedup"], merged["miou"], marker="o", label=f"{backbone} LC")[0]
            ax.scatter([1.0], [miou_dense], marker="s", color=line.get_color(), label=f"{backbone} dense")
            for r, x, y in zip(merged["rho"], merged["measured_speedup"], merged["miou"], strict=True):
                ax.annotate(f"{r:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.set_xlabel("measured speedup over the same backbone dense")
        ax.set_ylabel(f"mIoU (%), {dataset} val")
        ax.legend()
    fig.suptitle(f"LC across backbones: mIoU vs speed over rho (ours)\npreset {preset}, "
                 f"{', '.join(sorted(devices))}")
    fig.tight_layout()
    paths = save(fig, out_dir, outputs.BACKBONES_FIGURE)
    plt.close(fig)
    return paths


def write_backbones_outputs(cfg: dict, root: str | Path) -> list[Path]:
    """tables/backbones.csv and .md, figures/backbones_miou_speedup.png/.pdf below results/<preset>/."""
    root = Path(root)
    table, curves = build_backbones_table(cfg, root)
    csv_path = root / outputs.BACKBONES_TABLE
    write_csv(table, csv_path)
    line, markdown, notes = render_table(table.round(3))
    text = "\n".join(["# LC across backbones (ours: no paper reports it)", "",
                      f"`{Path(outputs.BACKBONES_TABLE).name}`. Dense = the backbone with one loss and one "
                      "head; LC = trained from DSN at evaluate.rho, as IRNet's chain. Speedups are LC over "
                      "the same backbone dense: FLOP-predicted at LC's stage shares, and measured on the "
                      "device named.", "", line, "", markdown, "", *notes])
    md_path = root / outputs.BACKBONES_MD
    write_text_atomic(md_path, text + "\n")
    return [csv_path, md_path, *_figure(curves, root / "figures", cfg["preset"])]
