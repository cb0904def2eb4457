"""Small helpers shared by several test modules (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

# Triton: in PyTorch's CUDA wheels, and a dev dependency (x86-64 Linux) for PyTorch's CPU wheels, whose
# interpreter (TRITON_INTERPRET=1) the CPU tests run the kernels in. Every test that needs it says so
# with this one mark, so that all of them skip, with this reason, where it is missing.
requires_triton = pytest.mark.skipif(find_spec("triton") is None, reason=(
    "needs triton: install the lock (requirements/lock.txt) or `pip install -e '.[dev]'`, which bring it "
    "on x86-64 Linux; elsewhere PyTorch's CUDA builds ship it"))


def randomise_bn(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding BN is exercised."""
    generator = generator or torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)


class EagerCall:
    """Stands in for `lc.models.region_graphs.GraphedCall` off CUDA: runs fn on the statics at
    "capture" and per call; `captures` counts the captures (reset it in the test)."""

    captures = 0

    def __init__(self, fn, static):
        type(self).captures += 1
        self.fn, self.static = fn, static

    def __call__(self, *inputs):
        for buffer, value in zip(self.static, inputs, strict=True):
            buffer.copy_(value)
        return self.fn(*self.static)


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (a free port) serving `handler` from a thread; `url` is its base URL.

    Use as a context manager (or call `start` / `close`); tests never reach beyond the loopback.
    """

    def __init__(self, handler: type) -> None:
        import http.server
        import threading

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self) -> LoopbackServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# --- Snakemake, always on a copy of the repository -------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "lc")
# results/paper/ holds the published tables (its top-level CSVs) and is also the paper preset's
# results folder (checkpoints, benchmarks): only the CSVs are copied
PAPER_TABLES_DIR = "results/paper"


# archive members for the extraction tests: 512 + 1536 bytes each in a tar
TAR_MEMBERS = {f"set/file{i}.txt": bytes([65 + i]) * 1500 for i in range(4)}


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (tarfile `mode`: "w" plain, "w:gz" gzipped) holding `members` in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def copy_repo(dest: Path) -> Path:
    """The workflow's files and the published tables (not data/, a preset's runs or .snakemake/)
    copied into `dest`."""
    for name in WORKFLOW_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, dest / name)
    (dest / PAPER_TABLES_DIR).mkdir(parents=True, exist_ok=True)
    for table in (REPO / PAPER_TABLES_DIR).glob("*.csv"):
        shutil.copy2(table, dest / PAPER_TABLES_DIR / table.name)
    return dest


def snakemake(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `cwd` (a copy_repo folder, never the checkout), with this
    interpreter's folder first on PATH so that the jobs run the same Python and packages."""
    assert not Path(cwd).resolve().is_relative_to(REPO), f"Snakemake would write into the checkout ({cwd})"
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- hand-made run outputs (evaluation, export, analysis, tables and figures tests) ----------------
def make_checkpoint(path: Path, cfg: dict, dataset: str = "voc", variant: str = "lc", rho: float = 0.9,
                    sharpen: float = 1.0, seed: int = 0, model_cfg: dict | None = None) -> Path:
    """A randomly initialised model saved as `lc train` saves it; `sharpen` scales the heads' logits
    (a random tiny net is unconfident everywhere; sharper logits spread the confidences)."""
    from lc.data import NUM_CLASSES
    from lc.models.cascade import LayerCascade
    from lc.models.mc import ModelCascade
    from lc.training.checkpoint import make_model_spec, save_checkpoint

    torch.manual_seed(seed)
    kind = "mc" if variant == "mc" else "cascade"
    num_classes = NUM_CLASSES[dataset]
    model_cfg = model_cfg or cfg["model"]
    model = (ModelCascade(num_classes, model_cfg, rho=rho) if kind == "mc"
             else LayerCascade(num_classes, variant, model_cfg, rho=rho))
    with torch.no_grad():  # heads read features, not their (image-independent) bias
        for name, param in model.named_parameters():
            if ".classifier.weight" in f".{name}":
                param.mul_(sharpen)
            elif ".classifier.bias" in f".{name}":
                param.zero_()
    spec = make_model_spec(kind, variant, num_classes, model_cfg, rho, dataset=dataset)
    save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec, "iteration": 0})
    return path


def write_config(cfg: dict, folder: Path) -> Path:
    """The resolved config as Snakemake passes it (`--config <file> --preset test`)."""
    import yaml

    path = folder / "config.resolved.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, presets={cfg["preset"]: {}})))
    return path


def eval_json(dataset: str, variant: str, miou: float, scales=(1.0,), flip=False, crf=False) -> dict:
    import numpy as np

    from lc.data.labels import CITYSCAPES_CLASS_NAMES, VOC_CLASS_NAMES

    names = list(VOC_CLASS_NAMES if dataset == "voc" else CITYSCAPES_CLASS_NAMES)
    k = len(names)
    per_class = [round(miou + (i % 5) - 2.0, 2) for i in range(k)]
    return {
        "dataset": dataset, "split": "val", "variant": variant, "preset": "test", "device": "cpu",
        "checkpoint": f"runs/{dataset}/{variant}/checkpoint.pt", "num_images": 4, "rho": 0.985,
        "protocol": {"scales": list(scales), "flip": flip, "crf": crf}, "class_names": names,
        "miou": miou, "pixel_accuracy": 90.0, "per_class_iou": per_class,
        "confusion": np.eye(k, dtype=int).tolist(), "stage_share": [0.25, 0.35, 0.40],
        "routed_label_hist": {"all": [100 + 10 * i for i in range(k)], "stage2": [50 + i for i in range(k)],
                              "stage3": [20 + 2 * i for i in range(k)]},
        "ms_per_image": 12.5, "stage_time_ms": [4.0, 5.0, 3.5],
    }


def make_fake_run(root: Path, with_cityscapes: bool = True, with_bench: bool = True) -> Path:
    """results/<preset>/ with every file the tables and figures read, tiny and hand-made."""
    import json

    import pandas as pd

    runs = root / "runs"
    for variant, miou in {"irnet": 60.0, "dsn": 61.0, "dsn_budget": 61.5, "dsn_dropout": 60.5, "mc": 40.0,
                          "lc": 62.5}.items():
        (runs / "voc" / variant).mkdir(parents=True)
        (runs / "voc" / variant / "eval_val.json").write_text(json.dumps(eval_json("voc", variant, miou)))
        iterations = 30 if variant == "irnet" else 20
        before = 0 if variant == "irnet" else 30
        (runs / "voc" / variant / "train_done.json").write_text(json.dumps(
            {"iterations": iterations, "iterations_total": iterations + before}))
    lc_dir = runs / "voc" / "lc"
    (lc_dir / "eval_val_ms.json").write_text(json.dumps(eval_json("voc", "lc", 63.0, (0.75, 1.0), True)))
    (lc_dir / "eval_val_ms_crf.json").write_text(
        json.dumps(eval_json("voc", "lc", 64.0, (0.75, 1.0), True, True)))
    pd.DataFrame({
        "rho": [1.0, 0.9, 0.8], "stage1_pct": [0.0, 40.0, 55.0], "stage2_pct": [0.0, 30.0, 28.0],
        "stage3_pct": [100.0, 30.0, 17.0], "miou": [61.0, 62.0, 58.0], "ms_per_image": [20.0, 14.0, 11.0],
        "device": "cpu", "preset": "test",
    }).to_csv(lc_dir / "sweep_val.csv", index=False)
    if with_cityscapes:
        (runs / "cityscapes" / "lc").mkdir(parents=True)
        (runs / "cityscapes" / "lc" / "eval_val.json").write_text(
            json.dumps(eval_json("cityscapes", "lc", 50.0)))
        (root / "export").mkdir()
        (root / "export" / "cityscapes_test.zip").write_bytes(b"PK")
        (root / "export" / "cityscapes_test.json").write_text(json.dumps({"num_images": 2}))
    if with_bench:
        bench = root / "bench"
        bench.mkdir()
        methods = ["deeplab_v2", "segnet", "irnet", "lc", "lc_fast"]
        pd.DataFrame({
            "method": methods, "rho": [None, None, None, 0.985, 0.8], "image_size": 64, "batch_size": 1,
            "ms_median": [30.0, 20.0, 18.0, 12.0, 9.0], "ms_p25": [29.0, 19.0, 17.0, 11.0, 8.0],
            "ms_p75": [31.0, 21.0, 19.0, 13.0, 10.0], "fps": [33.3, 50.0, 55.6, 83.3, 111.1],
            "params_m": [1.0, 0.5, 0.3, 0.35, 0.35], "stage1_pct": [None, None, None, 25.0, 55.0],
            "stage2_pct": [None, None, None, 35.0, 28.0], "mask_source": "model", "device": "cpu",
            "full_size": False, "runs": 2,
        }).to_csv(bench / "table3_speed.csv", index=False)
        pd.DataFrame({
            "setting": ["single_scale", "multi_scale", "multi_scale_crf"],
            "scales": ["1", "0.75 1", "0.75 1"],
            "crf": [False, False, True], "ms_median": [12.0, 30.0, 300.0], "fps": [83.3, 33.3, 3.3],
            "time_vs_single_scale": [1.0, 2.4, 24.0], "device": "cpu",
        }).to_csv(bench / "table6_fps.csv", index=False)
        pd.DataFrame({
            "rho": [1.0, 0.9, 0.8], "ms_median": [18.0, 12.0, 9.0], "fps": [55.6, 83.3, 111.1],
            "stage1_pct": [0.0, 40.0, 55.0], "stage2_pct": [0.0, 30.0, 28.0], "mask_source": "model",
            "device": "cpu",
        }).to_csv(bench / "rho_speed.csv", index=False)
        pd.DataFrame({
            "method": ["irnet"] * 3 + ["lc"] * 3, "rho": [None] * 3 + [0.985] * 3, "stage": [1, 2, 3] * 2,
            "ms_median": [5.0, 7.0, 6.0, 5.0, 4.0, 2.0], "active_pct": [100, 100, 100, 100, 75, 40],
            "device": "cpu",
        }).to_csv(bench / "stage_time.csv", index=False)
    return root
