"""The conda envs of the workflow (envs/*.yaml): dependency-only, pinned, and enough to run `lc`.

Conda itself is not needed: each file's pip list is resolved offline in a throwaway venv that sees
this interpreter's packages (--system-site-packages; the pins are the versions the tests run with),
and `python -m lc.cli --help` runs there the way the rules call it: the repository on PYTHONPATH.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import venv
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ENVS = {"lc-cpu": "cpu", "lc-gpu": "cu"}  # env name -> PyTorch wheel index flavour


def _pip_list(name: str) -> list[str]:
    spec = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())
    assert spec["name"] == name
    return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)


def _requirements(name: str) -> dict[str, str]:
    reqs = {}
    for line in _pip_list(name):
        if line.startswith("-"):
            continue
        package, _, pinned = line.partition("==")
        assert pinned, f"envs/{name}.yaml: {line!r} is not pinned (package==version)"
        reqs[package.lower()] = pinned
    return reqs


@pytest.mark.parametrize("name", ENVS)
def test_env_is_dependency_only_and_pinned(name):
    pip = _pip_list(name)
    assert not any(line.startswith(("-e", ".")) or ".." in line for line in pip), "installs the project"
    index = [line for line in pip if line.startswith("--extra-index-url")]
    assert len(index) == 1 and re.search(rf"download\.pytorch\.org/whl/{ENVS[name]}", index[0]), index
    reqs = _requirements(name)
    needed = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in needed:
        package = re.split(r"[<>=!~ \[]", dep)[0].lower()
        if package != "snakemake":  # runs the jobs; not needed inside them
            assert package in reqs, f"envs/{name}.yaml lacks {package} (pyproject.toml dependency)"
    assert ("triton" in reqs) == (name == "lc-gpu")


def _installed(package: str) -> str | None:
    try:
        return version(package).split("+")[0]  # torch 2.x+cpu / +cu128: the same release
    except PackageNotFoundError:
        return None


@pytest.mark.parametrize("name", ENVS)
def test_env_pins_are_the_tested_versions(name):
    """The pins are what this test environment runs: a pin nobody tested cannot creep in."""
    stale = {p: (v, _installed(p)) for p, v in _requirements(name).items() if _installed(p) not in (v, None)}
    assert not stale, f"envs/{name}.yaml pins differ from the tested versions (pinned, installed): {stale}"


def test_cpu_env_runs_lc_from_the_workflow_folder(tmp_path):
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=True, with_pip=False)
    python = env / "bin" / "python"
    reqs = [f"{p}=={v}" for p, v in _requirements("lc-cpu").items() if _installed(p)]
    # Offline resolution against what the venv sees: every pin is satisfied as written.
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run",
                            "--no-index", "--quiet", *reqs], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    # The rules' way to find the package: PYTHONPATH = the workflow's folder (not an installed lc).
    code = ("import lc, runpy, sys; print(lc.__file__); sys.argv = ['lc', '--help'];"
            " runpy.run_module('lc.cli', run_name='__main__')")
    run = subprocess.run([str(python), "-c", code],
                         cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(REPO)), run.stdout
    assert "train" in run.stdout and "evaluate" in run.stdout
