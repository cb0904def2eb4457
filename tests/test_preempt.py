"""Training stopped by a signal (SLURM time limit, scancel --signal, kill): resume.pt, exit 75, resume."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import pytest

import lc.training.loop as loop
from lc.cli.main import main
from lc.config import write_resolved_config
from lc.training.checkpoint import load_checkpoint
from lc.training.preempt import EXIT_RESUBMIT, Preempted, StopRequest, parse_time_left
from lc.training.setup import total_iterations

REPO = Path(__file__).resolve().parents[1]


def test_squeue_time_left_is_parsed():
    assert parse_time_left("1-02:03:04") == ((24 + 2) * 60 + 3) * 60 + 4
    assert parse_time_left("12:30:00\n") == 12 * 3600 + 30 * 60
    assert parse_time_left("4:05") == 245
    assert parse_time_left("UNLIMITED") is None and parse_time_left("INVALID") is None


def test_stop_request_restores_the_handlers_and_the_alarm():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGALRM)}
    with StopRequest(margin_s=300, time_left_s=3600) as stop:
        assert signal.getsignal(signal.SIGUSR1) == stop._handle
        assert 0 < signal.alarm(0) <= 3300  # armed margin_s before the limit (alarm(0) reads and clears it)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop() and stop.signame == "SIGUSR1"
    assert {s: signal.getsignal(s) for s in before} == before


def _signal_at(monkeypatch, iteration: int, signum: int) -> None:
    """Send `signum` to this process from inside the loop, right after `iteration` was logged."""
    log_row = loop._log_row

    def hooked(run, optimizer, window):
        log_row(run, optimizer, window)
        if run.iteration == iteration:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(loop, "_log_row", hooked)


def test_signal_writes_resume_pt_and_the_next_run_resumes(prepared_test_cfg, tmp_path, monkeypatch, caplog):
    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["train"]["checkpoint_every"] = 1000  # resume.pt exists only because of the signal
    _signal_at(monkeypatch, 2, signal.SIGUSR1)
    with StopRequest(margin_s=0) as stop, pytest.raises(Preempted) as info:
        loop.train(cfg, "voc", "irnet", tmp_path, device="cpu", stop=stop)
    assert info.value.iteration == 2 and info.value.signame == "SIGUSR1"
    assert load_checkpoint(tmp_path / "resume.pt")["iteration"] == 2
    assert not (tmp_path / "checkpoint.pt").exists()
    monkeypatch.undo()
    with caplog.at_level("INFO"):
        result = loop.train(cfg, "voc", "irnet", tmp_path, device="cpu")
    assert result.iterations == total_iterations(cfg, "irnet")
    assert "resuming from" in caplog.text and "iteration 2" in caplog.text
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "resume.pt").exists()


def test_lc_train_exits_75_on_sigterm(prepared_test_cfg, tmp_path, monkeypatch, capsys):
    cfg = prepared_test_cfg
    overrides = {"data": {"root": cfg["data"]["root"], "mirror": cfg["data"]["mirror"]},
                 "results_root": cfg["results_root"]}
    config_file = write_resolved_config(REPO / "config.yaml", "test", overrides, tmp_path / "config.yaml")
    _signal_at(monkeypatch, 2, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(config_file), "--preset", "test", "--dataset", "voc",
              "--variant", "irnet", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert info.value.code == EXIT_RESUBMIT
    assert "stopped on SIGTERM at iteration 2" in capsys.readouterr().err
    assert (tmp_path / "run" / "resume.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == before
