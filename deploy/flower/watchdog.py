"""The watchdog of a ProcessGroup: a tiny process that outlives the launcher and, once the
launcher is gone (killed with SIGKILL, say), kills every process the group started and
everything those started in turn.

Flower's SuperLink and SuperNode start `flower-superexec`, which starts `flwr-serverapp`
and `flwr-clientapp`; the apps run in sessions of their own and are not killed when their
parents die (tried: after a SIGKILL of `fedattack federate` the SuperLink, the SuperNodes,
their SuperExecs and the apps all ran on under PID 1; the parent-death signal that
ProcessGroup gives its own children does not reach the grandchildren). So the group marks
every child with one environment entry, `FEDATTACK_PROCESS=<token>/<name>`, which their
descendants inherit, and the watchdog kills what carries the mark.

Runs as a script (`python watchdog.py LAUNCHER_PID TOKEN`): standard library only, so it
starts in milliseconds and needs no import path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

ENV_KEY = "FEDATTACK_PROCESS"
POLL_S = 0.2


def mark(token: str, name: str) -> dict[str, str]:
    """The environment entry that marks a process (and its descendants) as the group's."""
    return {ENV_KEY: f"{token}/{name}"}


def marked(token: str, name: str | None = None) -> list[int]:
    """Live processes marked by the group `token` (only those of `name`, if given)."""
    exact = f"{ENV_KEY}={token}/{name}".encode() if name is not None else None
    prefix = f"{ENV_KEY}={token}/".encode()
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = env.read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if any(e == exact if exact else e.startswith(prefix) for e in entries):
            found.append(int(env.parent.name))
    return found


def sweep(token: str, name: str | None = None, timeout_s: float = 10.0) -> int:
    """SIGKILL every marked process until none is left (one may be starting another while we
    look); returns how many were killed."""
    me, killed = os.getpid(), 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p in marked(token, name) if p != me]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.05)
    return killed


def main(argv: list[str]) -> int:
    launcher, token = int(argv[1]), argv[2]
    # Our parent is the launcher; when it dies we are handed to PID 1 (or a subreaper).
    while os.getppid() == launcher:
        time.sleep(POLL_S)
    sweep(token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
