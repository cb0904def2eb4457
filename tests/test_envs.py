"""The lock (requirements/lock.txt) and the conda envs of the workflow (envs/*.yaml) generated from it.

Static checks (any machine): the lock pins every dependency of pyproject.toml at a version its
specifier admits, the envs pin exactly what the lock pins, and `python -m lc.cli` runs the way the
rules call it. Only an install made from the lock (the README's install lines leave the marker
file `<venv>/lc-installed-from-lock`) is compared with the lock: any other environment is the
user's own business, and a new release on the index must not turn the suite red.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "lock.txt"
ENVS = {"lc-cpu": "cpu", "lc-gpu": "cu"}  # env name -> PyTorch wheel index flavour
MARKER = Path(sys.prefix) / "lc-installed-from-lock"


def _parse(lines: list[str], where: str) -> dict[str, Requirement]:
    reqs = {}
    for line in lines:
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        pins = list(req.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"{where}: {line!r} is not pinned (name==version)"
        name = canonicalize_name(req.name)
        assert name not in reqs, f"{where}: {name} is pinned twice"
        reqs[name] = req
    return reqs


def _pin(req: Requirement) -> str:
    return next(iter(req.specifier)).version


def _lock() -> dict[str, Requirement]:
    return _parse(LOCK.read_text().splitlines(), "requirements/lock.txt")


def _pip_list(name: str) -> list[str]:
    spec = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())
    assert spec["name"] == name
    return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)


def _pyproject() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return ([Requirement(d) for d in project["dependencies"]],
            [Requirement(d) for d in project["optional-dependencies"]["dev"]])


def test_lock_pins_every_dependency_within_pyproject_specifiers():
    lock = _lock()
    runtime, dev = _pyproject()
    for req in runtime + dev:
        name = canonicalize_name(req.name)
        assert name in lock, f"requirements/lock.txt lacks {name}: run requirements/compile.sh"
        assert req.specifier.contains(_pin(lock[name]), prereleases=True), (
            f"requirements/lock.txt pins {name}=={_pin(lock[name])}, outside pyproject.toml's {req}: "
            "run requirements/compile.sh")
    assert "torch" in lock and "torchvision" in lock
    assert "+" not in _pin(lock["torch"]), "torch is pinned by version; the index picks the build"
    assert not any(n.startswith("nvidia-") for n in lock), "the CUDA libraries come with torch's CUDA wheel"


@pytest.mark.parametrize("name", ENVS)
def test_env_pins_exactly_what_the_lock_pins(name):
    pip = _pip_list(name)
    assert not any(line.startswith(("-e", ".")) or ".." in line for line in pip), "installs the project"
    index = [line for line in pip if line.startswith("--")]
    flavour = "cpu" if name == "lc-cpu" else "cu128"
    assert index == [f"--extra-index-url https://download.pytorch.org/whl/{flavour}"]
    env = _parse([line for line in pip if not line.startswith("--")], f"envs/{name}.yaml")
    lock = _lock()
    differ = {p: (_pin(r), _pin(lock[p]) if p in lock else None) for p, r in env.items()
              if p not in lock or _pin(lock[p]) != _pin(r)}
    assert not differ, f"envs/{name}.yaml differs from requirements/lock.txt (env, lock): {differ}; " \
                       "run requirements/compile.sh"
    runtime, _ = _pyproject()
    for req in runtime:
        if req.name != "snakemake":  # runs the jobs; not needed inside them
            assert canonicalize_name(req.name) in env, f"envs/{name}.yaml lacks {req.name}"
    assert ("triton" in env) == (name == "lc-gpu")
    assert not {"pytest", "ruff", "snakemake"} & set(env), "dev tools and snakemake stay out of the job envs"


def _installed(package: str) -> str | None:
    try:
        return version(package).split("+")[0]  # torch 2.x+cpu / +cu128: the same release
    except PackageNotFoundError:
        return None


@pytest.mark.skipif(not MARKER.exists(), reason=f"not installed from the lock (no {MARKER})")
def test_the_install_from_the_lock_is_the_lock():
    """Where the README's install lines made this environment, it holds exactly the locked versions."""
    wrong = {p: (_pin(r), _installed(p)) for p, r in _lock().items()
             if (r.marker is None or r.marker.evaluate()) and _installed(p) != _pin(r)}
    assert not wrong, f"installed versions differ from requirements/lock.txt (locked, installed): {wrong}"


def test_cpu_env_runs_lc_from_the_workflow_folder(tmp_path):
    # The rules' way to find the package: PYTHONPATH = the workflow's folder (not an installed lc).
    code = ("import lc, runpy, sys; print(lc.__file__); sys.argv = ['lc', '--help'];"
            " runpy.run_module('lc.cli', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code],
                         cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(REPO)), run.stdout
    assert "train" in run.stdout and "evaluate" in run.stdout


def _gpu_wheel_names() -> list[str]:
    text = (REPO / "requirements" / "gpu_wheels.sh").read_text()
    block = text.split("names=(", 1)[1].split(")", 1)[0]
    return [canonicalize_name(n) for n in block.split()]


def test_the_gpu_machine_wheels_are_pinned_by_the_lock():
    """requirements/gpu_wheels.sh downloads the lock's pins: each of its names must be there."""
    pinned = _parse(LOCK.read_text().splitlines(), "lock.txt")
    names = _gpu_wheel_names()
    assert {"cityscapesscripts", "jsonschema"} <= set(names)
    assert not [n for n in names if n not in pinned], "gpu_wheels.sh names a package the lock does not pin"


def test_the_bench_commands_import_without_what_a_pytorch_image_lacks_beyond_those_wheels():
    """On a GPU machine with a PyTorch image plus the wheels of gpu_wheels.sh, snakemake and pydensecrf
    are absent: the bench commands, the GPU check and the config schema must not import them."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('snakemake', 'pydensecrf', 'snakemake_executor_plugin_slurm'):\n"
        "            raise ImportError(f'{name} is not on a PyTorch image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lc.cli.main import main\n"
        "import lc.bench.gpu_check, lc.bench.models, lc.bench.train_step\n"
        "from lc.config import load_config\n"
        "load_config(sys.argv[1], 'paper')\n"
        "raise SystemExit(main(['bench', 'gpu-check', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "config.yaml")], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--budget-s" in proc.stdout
