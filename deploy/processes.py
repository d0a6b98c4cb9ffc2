"""Child processes that never outlive us: each in its own process group, stopped as a group.

Flower's SuperLink and SuperNode each start a `flower-superexec` child that survives a
plain SIGTERM of its parent for a while; signalling the whole group avoids orphans.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import FederationError

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(
                f"process exited with code {proc.returncode} at start-up; see {log_path}:\n{tail(log_path)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout:.0f}s; see {log_path}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen
    log_path: Path


@dataclass
class ProcessGroup:
    """Starts named processes (own session each) with their output in one log file each."""

    log_dir: Path
    procs: list[Managed] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        fh = log_path.open("ab")
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        fh.close()
        m = Managed(name, proc, log_path)
        self.procs.append(m)
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return m

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one managed process group (used to simulate a site going down)."""
        for m in self.procs:
            if m.name == name and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(m.proc.pid, sig)
                m.proc.wait(timeout=30)

    def dead(self) -> list[Managed]:
        return [m for m in self.procs if m.proc.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every group, wait, then SIGKILL what is left, descendants included
        (Flower's ServerApp process starts a session of its own)."""
        family = {d for m in self.procs for d in descendants(m.proc.pid)}
        for m in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for m in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # The group may hold children (superexec) even after the leader is gone.
        for m in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(m.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=5)
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out
