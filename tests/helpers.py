"""Small helpers shared by several test modules (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "lc", "results/paper")


def copy_repo(dest: Path) -> Path:
    """The workflow's files (not data/, results/<preset>/ or .snakemake/) copied into `dest`."""
    for name in WORKFLOW_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


def snakemake(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `cwd` (a copy_repo folder, never the checkout), with this
    interpreter's folder first on PATH so that the jobs run the same Python and packages."""
    assert not Path(cwd).resolve().is_relative_to(REPO), f"Snakemake would write into the checkout ({cwd})"
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
