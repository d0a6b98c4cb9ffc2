"""`kill -9` of `fedattack federate` while a run trains leaves no process behind: the
SuperLink and the SuperNodes die of their parent-death signal, Flower's SuperExec, ServerApp
and ClientApp processes (which leave the process group) are killed by the group's
watchdog. Real processes: the launcher, the SuperLink, four SuperNodes and their apps."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.flower.processes import descendants
from tests.conftest import REPO
from tests.flower_helpers import leftovers, tiny_data, tiny_federation_config

pytestmark = pytest.mark.e2e


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def carrying(needle: str) -> list[int]:
    """Live processes whose environment mentions `needle` (FLWR_HOME is in every Flower
    process's environment; the apps' command lines do not name the output folder)."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle.encode() in env.read_bytes() and _cmdline(int(env.parent.name)):
                found.append(int(env.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def test_sigkill_of_the_launcher_leaves_no_process(tmp_path: Path) -> None:
    cfg = tiny_federation_config(tmp_path, tiny_data(tmp_path), ["resnet18"], rounds=1)
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "federate", "--config", str(cfg)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 300
        while True:  # the SuperNodes are up and a ClientApp is training or validating
            names = [_cmdline(p) for p in descendants(launcher.pid)]
            nodes = sum("flower-supernode" in n for n in names)
            if nodes == 4 and any("flwr-clientapp" in n for n in names):
                break
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no training after 300 s: {names}\n{log.read_text()[-2000:]}"
            time.sleep(0.3)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        killed = time.monotonic()
        while leftovers(str(tmp_path)) or carrying(str(tmp_path)):
            assert time.monotonic() - killed < 15, (
                f"still alive 15 s after the SIGKILL: {leftovers(str(tmp_path))} "
                f"{[_cmdline(p)[:120] for p in carrying(str(tmp_path))]}"
            )
            time.sleep(0.5)
    finally:
        launcher.kill()
        for pid in carrying(str(tmp_path)):  # do not leave a failed test's processes running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
