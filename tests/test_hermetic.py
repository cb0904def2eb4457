"""The suite's own guards (tests/conftest.py) catch what they are there for: a connection outside the
loopback, torch's thread count or an environment variable left changed, and a write into the checkout.

Each case runs in a separate pytest on a scratch git checkout holding a copy of conftest.py and
helpers.py, so the failures it provokes stay there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

INNER = '''
import os
import socket
import threading

import torch

from conftest import REPO


def test_outside_connection():
    try:
        socket.create_connection(("192.0.2.1", 9), timeout=1)  # TEST-NET-1: never routed
    except OSError:
        pass  # swallowed, as retrying download code would: the guard still fails the test


def test_loopback_connection():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=5):
        pass
    server.close()
    assert "127.0.0.1" in os.environ["NO_PROXY"]


def test_threads_left_changed():
    torch.set_num_threads(torch.get_num_threads() + 1)


def test_environment_left_changed():
    os.environ["LC_HERMETIC_CHECK"] = "1"


def test_cwd_is_a_temporary_folder(tmp_path):
    assert os.getcwd() == str(tmp_path)


def test_writes_into_the_checkout():
    (REPO / "written_by_a_test.txt").write_text("x")
'''


@pytest.mark.slow
def test_guards_fail_what_they_guard(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "checkout"
    (repo / "tests").mkdir(parents=True)
    for name in ("conftest.py", "helpers.py"):
        shutil.copy2(TESTS / name, repo / "tests" / name)
    (repo / "tests" / "test_inner.py").write_text(INNER)
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "scratch"]):
        subprocess.run(["git", *args], cwd=repo, env=git, check=True, capture_output=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-rA",
               "tests"]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "ERROR at teardown of test_outside_connection" in out, out
    assert "the test opened connections outside the loopback: [('192.0.2.1', 9)]" in out, out
    assert "ERROR at teardown of test_threads_left_changed" in out, out
    assert "(restored now; use monkeypatch or try/finally): torch.get_num_threads()" in out, out
    assert "environment variables ['LC_HERMETIC_CHECK']" in out, out
    assert "ERROR at teardown of test_loopback_connection" not in out, out
    assert "ERROR at teardown of test_cwd_is_a_temporary_folder" not in out, out
    assert "ERROR tests/test_inner.py::test_cwd_is_a_temporary_folder" not in out, out
    assert "FAILED tests/test_inner.py" not in out, out  # the loopback and cwd tests pass
    assert "the test suite changed the checkout (git status): ?? written_by_a_test.txt" in out, out
