"""The SLURM side of the project without a cluster: squeue answers faked by a script on PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lc.bench.timing import node_access
from lc.training.preempt import slurm_time_left

REPO = Path(__file__).resolve().parents[1]


def _fake_squeue(tmp_path: Path, monkeypatch, answer: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")


def test_node_access_outside_slurm_is_local(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert node_access() == "local"


@pytest.mark.parametrize(("answer", "expected"), [("NO", "exclusive"), ("OK", "shared"), ("YES", "shared")])
def test_node_access_follows_squeue_oversubscribe(tmp_path, monkeypatch, answer, expected):
    _fake_squeue(tmp_path, monkeypatch, answer)
    assert node_access() == expected


def test_time_left_comes_from_squeue(tmp_path, monkeypatch):
    _fake_squeue(tmp_path, monkeypatch, "1:02:03")
    assert slurm_time_left() == 3723
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_time_left() is None


def test_slurm_profile_routes_by_gpu_count_and_retries_only_training():
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    partitions = yaml.safe_load((REPO / "workflow/profiles/slurm/partitions.yaml").read_text())["partitions"]
    assert profile["slurm-partition-config"] == "workflow/profiles/slurm/partitions.yaml"
    assert "slurm_partition" not in profile.get("default-resources", {})  # chosen per job by GPU count
    assert partitions["cpu"]["max_gpu"] == 0 and partitions["gpu"]["max_gpu"] > 0
    assert profile["slurm-status-command"] == "squeue" and profile["retries"] == 0
    assert profile["preemptible-rules"] == ["train", "backbone_train"] and profile["preemptible-retries"] >= 1
    assert "software-deployment-method" not in profile  # venv first; conda: --sdm conda
    for kind in ("op", "models", "stages", "rho", "table6"):
        assert "--exclusive" in profile["set-resources"][f"bench_{kind}"]["slurm_extra"]


def test_synth_progress_is_one_plain_line_in_a_log(caplog, monkeypatch):
    """Rule logs (stderr not a terminal) get a line per loop, not tqdm's carriage returns."""
    import sys

    from lc.data.synthetic import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)

    with caplog.at_level("INFO", logger="lc.data.synthetic"):
        assert list(_progress([1, 2, 3], "synth voc+sbd")) == [1, 2, 3]
    assert caplog.messages == ["synth voc+sbd: 3 images"]
