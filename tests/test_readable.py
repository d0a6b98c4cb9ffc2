"""Flower's output as a log reads it (deploy/flower/readable.py): Flower's own console handler
writes the lines, our wrapper passes them on without escapes and empty level lines, keeps
the child's exit code and hands it SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from deploy.flower.readable import clean

# a child that logs through Flower's own logger, as flower-supernode does
FLOWER_CHILD = """
import signal, sys, time
from flwr.common.logger import log
from logging import INFO, WARNING
log(INFO, "")
log(INFO, "[RUN 42]")
log(WARNING, "site A: slow")
if sys.argv[1] == "wait":
    signal.signal(signal.SIGTERM, lambda *_: (log(INFO, "got SIGTERM, stopping"), sys.exit(7)))
    log(INFO, "ready")
    time.sleep(60)
sys.exit(3)
"""

WRAPPER = """
import sys
from deploy.flower.readable import exec_readable
exec_readable([sys.executable, "-c", sys.argv[1], sys.argv[2]], {"PATH": "/usr/bin:/bin"})
"""


@pytest.mark.unit
def test_clean_drops_escapes_and_empty_level_lines() -> None:
    assert clean("\x1b[92mINFO \x1b[0m:      \n") is None
    assert clean("   \n") is None
    assert clean("\x1b[92mINFO \x1b[0m:      [RUN 42]\n") == "INFO: [RUN 42]"
    assert clean("plain progress 3/4\n") == "plain progress 3/4"


def _wrapper(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, FLOWER_CHILD, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.integration
def test_flower_lines_come_through_clean_with_the_exit_code() -> None:
    proc = _wrapper("exit")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    lines = out.splitlines()
    assert "\x1b" not in out
    assert [line for line in lines if line.startswith(("INFO", "WARNING"))] == [
        "INFO: [RUN 42]",
        "WARNING: site A: slow",
    ], out


@pytest.mark.integration
def test_sigterm_reaches_the_child() -> None:
    proc = _wrapper("wait")
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "ready" in line:
            break
    assert any("ready" in s for s in seen), seen
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert "INFO: got SIGTERM, stopping" in rest
    assert proc.returncode == 7


@pytest.mark.integration
def test_we_end_with_the_child_even_if_a_grandchild_holds_the_pipe() -> None:
    """Flower's SuperExec inherits the SuperNode's stdout and can outlive it: the wrapper
    must not wait for the pipe to close."""
    child = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('node: giving up', flush=True)\n"
        "sys.exit(5)\n"
    )
    started = time.monotonic()
    # a process group of its own, which the sleeping grandchild stays in: killed with it below
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, child, "exit"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        rc = proc.wait(timeout=30)
    finally:
        # exactly the processes this test started (a live member keeps the group's id from reuse)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert rc == 5
    assert time.monotonic() - started < 20
