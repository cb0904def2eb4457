"""The config's `region` block reaches the processes that run region stages: train and evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import lc.evaluation.evaluate
import lc.training.loop
from lc.cli.main import main
from lc.models import region_irnet

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def region_off(tmp_path, monkeypatch):
    """A config with every region switch off; the process-wide switches restored afterwards."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["region"] = {"planned": False, "buckets": False, "cuda_graphs": False}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(region_irnet, "_options", dict(region_irnet._options))
    monkeypatch.chdir(tmp_path)
    return path


def _seen(monkeypatch, module, name: str) -> list[dict]:
    seen: list[dict] = []

    def record(*args, **kwargs):
        seen.append(dict(region_irnet._options))
        raise SystemExit(0)

    monkeypatch.setattr(module, name, record)
    return seen


@pytest.mark.parametrize("argv, module, name", [
    (["train", "--dataset", "voc", "--variant", "lc", "--out", "run"], lc.training.loop, "train"),
    (["evaluate", "--dataset", "voc", "--checkpoint", "c.pt", "--out", "e.json"], lc.evaluation.evaluate,
     "run_evaluation"),
])
def test_train_and_evaluate_apply_the_region_block(region_off, monkeypatch, argv, module, name):
    assert region_irnet._options["planned"]  # the default this config turns off
    seen = _seen(monkeypatch, module, name)
    with pytest.raises(SystemExit):
        main([*argv, "--config", str(region_off), "--preset", "demo"])
    assert seen == [{"planned": False, "buckets": False, "cuda_graphs": False}]
