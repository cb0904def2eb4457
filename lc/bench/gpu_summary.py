"""The GPU check's one-screen summary (pass/fail against the GPU targets) and its plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["TARGETS", "summarise"]

# issue #18's GPU targets (ours): what a pass means
TARGETS = {
    "stage_efficiency": 0.75,      # for every f in [0.25, 1], batch 1 and 8, tf32 and bf16
    "lc_speedup": 1.43,            # the paper's LC speedup over dense IRNet
    "lc_of_predicted": 0.9,        # LC's measured / time-predicted speedup
    "lc_fast_speedup": 2.2,
    "host_ms": 2.0,                # one eager planned stage
}


def _verdict(ok) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


Line = tuple[str, bool | None, str]


def _tests(t: pd.DataFrame) -> list[Line]:
    tests = t.iloc[0]
    ran = None if pd.isna(tests["passed"]) else bool(tests["passed"])
    return [("gpu tests", ran, str(tests["detail"]))]


def _equality(eq: pd.DataFrame) -> list[Line]:
    return [(f"{eq['compared'].iloc[0]} equal", bool(eq["passed"].all()),
             f"max |diff| {eq['max_abs_diff'].max():.3g}")]


def _launches(ln: pd.DataFrame) -> list[Line]:
    eager = ln[ln["path"] == "eager"]
    host = float(eager[eager["stage"] == 2]["host_ms"].iloc[0])
    return [("launch budget (60 / 45)", bool((eager["ops"] <= eager["budget"]).all()),
             ", ".join(f"stage {r.stage} {r.path}: {r.ops} ops" for r in ln.itertuples())),
            ("no syncing op", bool((eager["syncing_ops"].fillna("") == "").all()), ""),
            (f"host time eager stage 2 <= {TARGETS['host_ms']} ms", host <= TARGETS["host_ms"],
             f"{host:.2f} ms")]


def _stage_grid(grid: pd.DataFrame) -> list[Line]:
    # a grid cut before its first cell has the column and no row
    complete = "complete" not in grid.columns or (len(grid) > 0 and bool(grid["complete"].all()))
    cut = "" if complete else " (cut short by the budget: the cells measured)"
    name = f"stage efficiency >= {TARGETS['stage_efficiency']} (f >= 0.25)"
    judged = grid[grid["fraction"] >= 0.25] if "fraction" in grid.columns else grid.iloc[:0]
    if judged.empty:
        return [(name, None, "no cell measured" + cut)]
    worst = judged.loc[judged["efficiency"].idxmin()]
    return [(name,
             bool((judged["efficiency"] >= TARGETS["stage_efficiency"]).all()),
             f"min {worst['efficiency']:.2f} ({worst['mode']}, batch {worst['batch']}, "
             f"stage {worst['stage']}, f={worst['fraction']}){cut}")]


def _end_to_end(e2e: pd.DataFrame) -> list[Line]:
    out: list[Line] = []
    best = e2e[e2e["method"] != "irnet_dense"].sort_values("ms").groupby("method").first()
    if "lc" in best.index:
        lc = best.loc["lc"]
        out.append((f"LC >= {TARGETS['lc_speedup']}x dense IRNet", lc["speedup"] >= TARGETS["lc_speedup"],
                    f"x{lc['speedup']:.2f} (graphed: {bool(lc['graphed'])})"))
        out.append((f"LC >= {TARGETS['lc_of_predicted']} of time-predicted",
                    lc["speedup"] >= TARGETS["lc_of_predicted"] * lc["predicted"],
                    f"x{lc['speedup']:.2f} of x{lc['predicted']:.2f}"))
    if "lc_fast" in best.index:
        fast = best.loc["lc_fast"]
        out.append((f"LC fast >= {TARGETS['lc_fast_speedup']}x",
                    fast["speedup"] >= TARGETS["lc_fast_speedup"],
                    f"x{fast['speedup']:.2f} (predicted x{fast['predicted']:.2f})"))
    return out


def _train(t: pd.DataFrame) -> list[Line]:
    tr = t.set_index("variant")
    return [("train s/iter (dsn, lc)", None,
             f"dsn {tr.loc['dsn', 's_per_iter']:.3f} s, lc {tr.loc['lc', 's_per_iter']:.3f} s; first "
             f"iteration {tr.loc['dsn', 'first_iter_s']:.1f} / {tr.loc['lc', 'first_iter_s']:.1f} s")]


def _triton_cache(t: pd.DataFrame) -> list[Line]:
    row = t.iloc[0]
    return [("Triton kernels (this process)", None,
             f"{row['compiled']} compiled ({row['compile_s']:.1f} s), {row['cache_hits']} loaded from "
             f"the cache {row['cache_dir']}")]


SECTION_LINES = {"tests": _tests, "equality": _equality, "launches": _launches, "stage_grid": _stage_grid,
                 "end_to_end": _end_to_end, "train": _train, "triton_cache": _triton_cache}


def _no_figures(table: pd.DataFrame | None) -> str | None:
    """Why a section has no figures (not run, its error, skipped for time), else None."""
    if table is None:
        return "not run"
    for column in ("error", "skipped"):
        if column in table.columns:
            return f"{column}: {table[column].iloc[0]}"
    return None


def _lines(tables: dict[str, pd.DataFrame]) -> list[Line]:
    out: list[Line] = []
    for name, lines in SECTION_LINES.items():
        why = _no_figures(tables.get(name))
        if why is None:
            try:
                out += lines(tables[name])
                continue
            except (KeyError, IndexError, ValueError) as exc:  # a table without what its lines read
                why = f"unreadable table ({type(exc).__name__}: {exc})"
        out.append((name, None, why))
    return out


def _plot(grid: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (mode, batch, stage), part in grid.groupby(["mode", "batch", "stage"]):
        ax.plot(part["fraction"], part["efficiency"], marker="o", label=f"{mode} b{batch} stage {stage}")
    ax.axhline(TARGETS["stage_efficiency"], color="grey", linestyle="--", label="target")
    ax.set_xlabel("active fraction f")
    ax.set_ylabel("efficiency = speedup x f")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(tables: dict[str, pd.DataFrame], setup, out: Path, echo: bool = True) -> str:
    """Write summary.txt and stage_efficiency.png under `out` (`echo`: and print it); return the text."""
    import torch

    device = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "cpu"
    head = [f"lc bench gpu-check on {device}{' (--quick: tiny network and map)' if setup.quick else ''}"]
    if setup.device.type != "cuda":
        head.append("CPU run: proves the check executes; its figures are not GPU measurements")
    body = [f"{_verdict(ok)}  {name}{': ' + detail if detail else ''}" for name, ok, detail in _lines(tables)]
    text = "\n".join(head + body) + "\n"
    (out / "summary.txt").write_text(text)
    grid = tables.get("stage_grid")
    if _no_figures(grid) is None and "efficiency" in grid.columns and len(grid):
        _plot(grid, out / "stage_efficiency.png")
    if echo:
        print(text, end="")
    return text
