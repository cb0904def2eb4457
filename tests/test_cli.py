"""The `lc` command line: one module per command group, choices and argument types, clear errors
(exit 2, one line, no traceback) for user errors, logging switches, and lc.device."""

from __future__ import annotations

import argparse
import errno
import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lc.cli import common
from lc.cli.main import build_parser, main
from lc.device import DeviceError, device_name, resolve_device

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "config.yaml")
BASE = ["--config", CONFIG, "--preset", "test"]


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "lc") -> dict[str, argparse.ArgumentParser]:
    """Every leaf command's parser, by its full name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_subparsers(sub, f"{prefix} {name}") or {f"{prefix} {name}": sub})
    return found


def _no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- structure ----------------------------------------------------------------------------------
def test_every_command_group_has_its_module():
    commands = set(_subparsers(build_parser()))
    expected = {"config", "weights", "synth", "download", "prepare", "train", "recalibrate-bn", "evaluate",
                "sweep", "export", "analyze difficulty", "analyze stages", "bench op", "bench models",
                "bench stages", "bench rho", "bench table6", "bench gpu-check", "bench gpu-compile",
                "bench train", "bench backbone", "model-info", "tables", "figures", "backbones-table",
                "provenance"}
    assert commands == {f"lc {name}" for name in expected}
    for group in ("data", "train", "evaluate", "bench", "report"):
        assert (REPO / "lc" / "cli" / f"{group}.py").is_file()


def test_bench_op_has_one_spelling():
    with pytest.raises(SystemExit) as info:
        main(["bench-op", "--out", "x.csv"])
    assert info.value.code == 2
    assert "lc bench op" in _subparsers(build_parser())


def test_every_command_takes_the_common_options():
    for name, parser in _subparsers(build_parser()).items():
        options = {s for action in parser._actions for s in action.option_strings}
        assert {"--config", "--preset", "--quiet", "--verbose"} <= options, name


# --- choices and argument types ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["train", *BASE, "--dataset", "voc", "--variant", "lc", "--out", "r", "--device", "foo"],
     "argument --device: invalid choice: 'foo'"),
    (["train", *BASE, "--dataset", "kitti", "--variant", "lc", "--out", "r"],
     "argument --dataset: invalid choice"),
    (["train", *BASE, "--dataset", "voc", "--variant", "lcc", "--out", "r"],
     "argument --variant: invalid choice"),
    (["evaluate", *BASE, "--checkpoint", "c", "--dataset", "voc", "--split", "dev", "--out", "o"],
     "argument --split: invalid choice"),
    (["bench", "fast", "--out", "o"], "invalid choice: 'fast'"),
    (["evaluate", *BASE, "--checkpoint", "c", "--dataset", "voc", "--out", "o", "--rho", "2.5"],
     "argument --rho: rho must be in (0, 1]"),
    (["train", *BASE, "--dataset", "voc", "--variant", "lc", "--out", "r", "--rho", "-1"],
     "argument --rho: rho must be in (0, 1]"),
    (["sweep", *BASE, "--checkpoint", "c", "--dataset", "voc", "--out", "o", "--rho", "0"], "rho must be"),
    (["bench", "op", *BASE, "--out", "o", "--runs", "0"], "argument --runs: must be >= 1"),
    (["evaluate", *BASE, "--checkpoint", "c", "--dataset", "voc", "--out", "o", "--max-images", "x"],
     "expected a whole number"),
])
def test_bad_arguments_are_usage_errors(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_no_resume_help_names_resume_pt():
    text = _subparsers(build_parser())["lc train"].format_help()
    assert "--no-resume" in text and "resume.pt" in " ".join(text.split())


# --- user errors: exit 2, one clear line; bugs keep their traceback --------------------------------
def test_config_error_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("5\n")
    assert main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lc config: error: ") and str(bad) in err and "\n" not in err


def test_missing_input_exits_2(tmp_path, capsys):
    rc = main(["evaluate", *BASE, "--checkpoint", str(tmp_path / "none.pt"), "--dataset", "voc",
               "--out", str(tmp_path / "e.json"), "--device", "cpu"])
    assert rc == 2
    assert "none.pt" in capsys.readouterr().err


def test_bench_op_on_cuda_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch, capsys):
    _no_cuda(monkeypatch)
    out = tmp_path / "op.csv"
    assert main(["bench", "op", *BASE, "--device", "cuda", "--out", str(out)]) == 3  # EXIT_NO_DEVICE
    err = capsys.readouterr().err
    # the error line is there (torch may log "No CUDA runtime is found" before it, on importing
    # torch.utils.cpp_extension where CUDA_HOME exists without a GPU)
    lines = [line for line in err.splitlines() if line.startswith("lc bench op: error: ")]
    assert len(lines) == 1 and lines[0].startswith("lc bench op: error: device 'cuda' was requested")
    assert "CUDA is not usable" in err
    assert "Traceback" not in err and not out.exists()


def test_train_on_cuda_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch, capsys):
    _no_cuda(monkeypatch)
    rc = main(["train", *BASE, "--dataset", "voc", "--variant", "irnet", "--out", str(tmp_path / "run"),
               "--device", "cuda"])
    assert rc == 3  # not 2: a retry on this node cannot help (the SLURM profile does not retry it)
    err = capsys.readouterr().err
    assert err.startswith("lc train: error: device 'cuda'") and "Traceback" not in err


def test_download_error_exits_2(monkeypatch, capsys):
    import lc.data.download

    def refuse(cfg, key, out=None):
        raise lc.data.download.DownloadError(f"{key}: HTTP 500 from the mirror")

    monkeypatch.setattr(lc.data.download, "fetch_archive", refuse)
    assert main(["download", *BASE, "sbd"]) == 2
    assert capsys.readouterr().err.strip() == "lc download: error: sbd: HTTP 500 from the mirror"


def test_value_error_from_a_third_party_library_is_a_bug(monkeypatch):
    import lc.cli.data

    def broken(args):
        import numpy as np

        np.zeros(3).reshape(2, 2)  # ValueError raised inside numpy: a bug, not a user error

    monkeypatch.setattr(lc.cli.data, "_cmd_config", broken)
    with pytest.raises(ValueError, match="reshape"):
        main(["config", *BASE])


@pytest.mark.parametrize("exc, code", [
    (OSError(errno.ENOSPC, "No space left on device", "results/x.csv"), 2),
    (KeyboardInterrupt(), 130),
])
def test_disk_full_and_interrupt_end_without_traceback(monkeypatch, capsys, exc, code):
    import lc.cli.data

    def fail(args):
        raise exc

    monkeypatch.setattr(lc.cli.data, "_cmd_config", fail)
    assert main(["config", *BASE]) == code
    err = capsys.readouterr().err
    assert err.startswith("lc config: ") and "Traceback" not in err


def test_unexpected_exceptions_keep_their_traceback(monkeypatch):
    import lc.cli.data

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lc.cli.data, "_cmd_config", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["config", *BASE])


def test_python_m_lc_cli_exits_with_mains_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("presets: [a]\n")
    result = subprocess.run([sys.executable, "-m", "lc.cli", "config", "--config", str(bad)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert "presets: in" in result.stderr and "Traceback" not in result.stderr


# --- logging ------------------------------------------------------------------------------------------
def _log_lines(verbosity: int, tty: bool) -> str:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    common.configure_logging(verbosity, stream)
    log = logging.getLogger("lc.somewhere")
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    common.configure_logging(0)  # back to the default handler on stderr
    return stream.getvalue()


def test_logging_levels_follow_quiet_and_verbose():
    assert "info line" in _log_lines(0, tty=True) and "debug line" not in _log_lines(0, tty=True)
    quiet = _log_lines(-1, tty=True)
    assert "warning line" in quiet and "info line" not in quiet
    assert "debug line" in _log_lines(1, tty=True)


def test_log_lines_are_plain_and_stamped_when_not_a_terminal():
    lines = _log_lines(0, tty=False).splitlines()
    assert len(lines) == 2 and all("\r" not in line for line in lines)
    assert " INFO lc.somewhere: info line" in lines[0] and " WARNING lc.somewhere: warning line" in lines[1]
    assert _log_lines(0, tty=True).splitlines() == ["info line", "warning line"]


def test_quiet_and_verbose_reach_the_lc_logger():
    main(["config", *BASE, "--quiet"])
    assert logging.getLogger("lc").level == logging.WARNING
    main(["config", *BASE, "-v"])
    assert logging.getLogger("lc").level == logging.DEBUG
    handlers = [h for h in logging.getLogger("lc").handlers if getattr(h, common._HANDLER_FLAG, False)]
    assert len(handlers) == 1  # repeated runs in one process do not stack handlers
    common.configure_logging(0)


# --- lc.device ----------------------------------------------------------------------------------------
def test_resolve_device_auto_and_cpu(monkeypatch):
    _no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None) == resolve_device("cpu")
    assert device_name(torch.device("cpu")).startswith("cpu: ")


def test_resolve_device_cuda_never_falls_back(monkeypatch):
    _no_cuda(monkeypatch)
    with pytest.raises(DeviceError, match="CUDA is not usable: torch sees no CUDA device"):
        resolve_device("cuda")


def test_resolve_device_names_a_driver_too_old(monkeypatch):
    def old_driver() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version "
                      "11040).", UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", old_driver)
    with pytest.raises(DeviceError, match="driver on your system is too old"):
        resolve_device("cuda")


def test_resolve_device_checks_the_device_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError, match="'cuda:3' was requested but 1 CUDA device"):
        resolve_device("cuda:3")


def _cuda_with_init_warning(monkeypatch, message: str) -> None:
    def init() -> None:
        warnings.warn(message, UserWarning, stacklevel=1)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_resolve_device_refuses_a_gpu_the_build_cannot_drive(monkeypatch):
    _cuda_with_init_warning(monkeypatch, "\nNVIDIA X with CUDA capability sm_120 is not compatible with the "
                                         "current PyTorch installation.")
    with pytest.raises(DeviceError, match="sm_120 is not compatible"):
        resolve_device("cuda")


def test_resolve_device_ignores_benign_cuda_warnings(monkeypatch):
    _cuda_with_init_warning(monkeypatch, "CUDA matmul TF32 is enabled by default")
    assert resolve_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize("name", ["foo", "tpu"])
def test_resolve_device_refuses_unknown_devices(name):
    with pytest.raises(DeviceError, match="use one of auto, cpu, cuda"):
        resolve_device(name)


def test_one_resolve_device_in_the_package():
    hits = [p for p in (REPO / "lc").rglob("*.py") if "def resolve_device" in p.read_text()
            or "def device_name" in p.read_text()]
    assert hits == [REPO / "lc" / "device.py"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resolve_device_cuda_on_a_gpu():
    assert resolve_device("cuda").type == "cuda"
    assert device_name(torch.device("cuda"))
