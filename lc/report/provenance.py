"""What produced a run: git commit (and whether the tree was dirty), config hash, versions, device."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from lc.config import config_hash
from lc.data.io import write_text_atomic

PACKAGES = ("lc", "torch", "torchvision", "timm", "triton", "numpy", "pandas", "matplotlib", "scipy",
            "snakemake", "snakemake-executor-plugin-slurm", "cityscapesscripts", "pydensecrf2", "pyyaml",
            "jsonschema")


def _git(*args: str, cwd: Path, strip: bool = True) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                                check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if strip else result.stdout


def git_state(repo: str | Path = ".") -> dict:
    """Commit, branch and dirty flag of the repository at `repo` (all None outside a git checkout)."""
    repo = Path(repo)
    commit = _git("rev-parse", "HEAD", cwd=repo)
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "dirty_files": None}
    # porcelain lines are "XY path"; the leading status column may be a space, so keep it
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=repo, strip=False) or ""
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "commit": commit,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo),
        "dirty": bool(changed),
        "dirty_files": changed,
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict:
    """CPU, and the CUDA devices torch sees."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                 "capability": f"{props.major}.{props.minor}"})
    return info


def collect(cfg: dict, repo: str | Path = ".") -> dict:
    """The provenance record of a resolved config, as a JSON-serialisable dict."""
    return {
        "preset": cfg["preset"],
        "config_hash": config_hash(cfg),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(repo),
        "packages": package_versions(),
        "device": device_info(),
        "config": cfg,
    }


def write_provenance(cfg: dict, out: str | Path, repo: str | Path = ".") -> Path:
    """Write the provenance record to `out` (atomically)."""
    out = Path(out)
    record = collect(cfg, repo)
    write_text_atomic(out, json.dumps(record, indent=2, default=str) + "\n")
    return out
