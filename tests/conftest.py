"""Shared fixtures: the test preset with its synthetic data sets prepared once per session; for every
test, global state restored, the network kept to the loopback and the cwd in tmp_path; for the
session, a check that the checkout is left as it was found."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_CHECKOUT = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def prepared_test_cfg(tmp_path_factory) -> dict:
    """The resolved `test` preset with synthetic VOC and Cityscapes prepared under a temp folder.

    Results go to a temp folder too. Treat the dict as read-only (copy.deepcopy before changing it).
    """
    from lc.config import load_config
    from lc.data.cityscapes import prepare_cityscapes
    from lc.data.download import fetch_archive
    from lc.data.synthetic import make_synthetic_mirror
    from lc.data.voc import prepare_voc
    from lc.data.weights import fetch_weights
    from lc.models.timm_weights import write_synthetic_weights

    root = tmp_path_factory.mktemp("lc_test_data")
    cfg = load_config(REPO / "config.yaml", preset="test",
                      overrides={"data": {"root": str(root / "data"), "mirror": str(root / "mirror")},
                                 "results_root": str(root / "results")})
    make_synthetic_mirror(cfg)
    write_synthetic_weights(cfg, cfg["data"]["mirror"])
    for key in ("voc2012_trainval", "voc2012_test", "sbd", "cityscapes_gtfine", "cityscapes_leftimg8bit"):
        fetch_archive(cfg, key)
    prepare_voc(cfg)
    prepare_cityscapes(cfg)
    fetch_weights(cfg)  # the synthetic ImageNet stand-in the irnet pretraining starts from
    return cfg


# --- every test: global state restored, loopback-only network, cwd outside the checkout -------------
# set by pytest itself, or once per process by torch (its default cache folders): not a test's doing
_PROCESS_OWNED = frozenset({"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"})


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PROCESS_OWNED}


def _switches() -> dict:
    """Process-wide switches a test may flip: torch's TF32 flags and default dtype, the region path's
    options and backends (name -> (value, restore)). (The `lc` logger's level is not one: every
    `main()` sets it, as the command line does.)"""
    import torch

    import lc.models.region_irnet as region_irnet
    import lc.ops.library as library
    import lc.ops.region_conv as region_conv

    def attr(owner, name):
        return getattr(owner, name), lambda v: setattr(owner, name, v)

    def restore_options(v):
        region_irnet._options.clear()
        region_irnet._options.update(v)

    return {
        "torch.backends.cuda.matmul.allow_tf32": attr(torch.backends.cuda.matmul, "allow_tf32"),
        "torch.backends.cudnn.allow_tf32": attr(torch.backends.cudnn, "allow_tf32"),
        "torch default dtype": (torch.get_default_dtype(), torch.set_default_dtype),
        "region options (configure_region)": (dict(region_irnet._options), restore_options),
        "library backend (set_library_backend)": attr(library, "_cpu_backend"),
        "region backend (set_region_backend)": attr(region_conv, "_backend"),
    }


@pytest.fixture(autouse=True)
def _global_state():
    """Fail (after restoring them) a test that leaves torch's thread count, os.environ, the cwd or one of
    the process-wide switches (`_switches`) changed."""
    import torch

    threads, cwd, env = torch.get_num_threads(), os.getcwd(), _environ()
    switches = _switches()
    yield
    changed = []
    for name, (now, _) in _switches().items():
        before, restore = switches[name]
        if now != before:
            changed.append(f"{name} {before!r} -> {now!r}")
            restore(before)
    if torch.get_num_threads() != threads:
        changed.append(f"torch.get_num_threads() {threads} -> {torch.get_num_threads()}")
        torch.set_num_threads(threads)
    if os.getcwd() != cwd:
        changed.append(f"cwd {cwd} -> {os.getcwd()}")
        os.chdir(cwd)
    now = _environ()
    if now != env:
        keys = sorted(k for k in set(env) | set(now) if env.get(k) != now.get(k))
        changed.append(f"environment variables {keys}")
        for key in set(now) - set(env):
            del os.environ[key]
        os.environ.update(env)
    if changed:
        pytest.fail("the test left global state changed (restored now; use monkeypatch or try/finally): "
                    + "; ".join(changed), pytrace=False)


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a host name: resolving it would already leave the machine
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return any(ip in net for net in _LOOPBACK)


@pytest.fixture(autouse=True)
def _hermetic(_global_state, monkeypatch, tmp_path):
    """Loopback-only network (any other connection is refused and fails the test), NO_PROXY covering
    the loopback so proxies never see the fake sites, and the test's own tmp_path as the cwd: a test
    that writes relative paths writes there, never into the checkout."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost,::1")
    outside: list[object] = []

    def guard(original):
        def connect(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
                outside.append(address)
                raise ConnectionRefusedError(f"tests reach only the loopback; refused {address!r}")
            return original(self, address, *args)
        return connect

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    monkeypatch.chdir(tmp_path)
    yield
    if outside:
        pytest.fail(f"the test opened connections outside the loopback: {outside}", pytrace=False)


# --- the whole session: the checkout is left as it was found -------------------------------------
_SCRATCH = ("__pycache__", ".pytest_cache", ".ruff_cache", ".egg-info", ".benchmarks")


def _checkout_state() -> list[str] | None:
    """`git status --porcelain --ignored` of the checkout, less the interpreter's and tools' caches;
    None when this is not a git checkout (or git is missing)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored",
                              "--untracked-files=all"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sorted(line for line in out.stdout.splitlines() if not any(s in line for s in _SCRATCH))


def pytest_sessionstart(session):
    session.config.stash[_CHECKOUT] = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_CHECKOUT, None)
    after = _checkout_state() if before is not None else None
    if before is None or after is None or before == after:
        return
    changed = sorted(set(before) ^ set(after))
    writer = session.config.get_terminal_writer()
    writer.line()
    writer.line(
        "FAILED (session check) the test suite changed the checkout (git status): " + "; ".join(changed[:20]),
        red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
