"""Child processes that never outlive us: each in its own process group, stopped as a group.

Flower's SuperLink and SuperNode each start a `flower-superexec` child that survives a
plain SIGTERM of its parent for a while; signalling the whole group avoids orphans.
When we die without stopping them (SIGKILL), each child gets SIGKILL from the kernel (the
parent-death signal), and the group's watchdog (deploy/flower/watchdog.py) kills what they
started in turn: Flower's SuperExec and app processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.flower import watchdog
from shared.errors import FederationError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGKILL when the parent (thread) dies; and die now if the
    parent is already gone (it may die between the fork and the prctl)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` that gives the child a parent-death signal (Linux; a no-op elsewhere).

    The kernel sends it when the *thread* that forked the child exits, so call
    subprocess from a thread that lives as long as the child should."""
    return functools.partial(_die_with, os.getpid())


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
    """Starts named processes (own session each) with their output in one log file each.

    Every child is started from one thread the group owns (the parent-death signal is tied
    to the forking thread, and a caller's thread may end before the child should), carries
    the group's mark in its environment, and is watched by the group's watchdog."""

    log_dir: Path
    procs: list[Managed] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _spawner: ThreadPoolExecutor | None = field(default=None, repr=False)
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)

    def _spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process-group")
        return self._spawner.submit(lambda: subprocess.Popen(cmd, **kwargs)).result()

    def _watch(self) -> None:
        """Start the watchdog once: it outlives us (no parent-death signal, own session)."""
        if self._watchdog is None or self._watchdog.poll() is not None:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", watchdog.__file__, str(os.getpid()), self.token],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._watch()
        log_path = self.log_dir / f"{name}.log"
        fh = log_path.open("ab")
        try:
            proc = self._spawn(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {}), **watchdog.mark(self.token, name)},
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        finally:
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
                if sig == signal.SIGKILL:  # and what it started outside its group
                    watchdog.sweep(self.token, name)

    def dead(self) -> list[Managed]:
        return [m for m in self.procs if m.proc.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every group, wait, then SIGKILL what is left, descendants included
        (Flower's ServerApp process starts a session of its own)."""
        # PIDs are reused: a process is signalled only while it is provably the one we
        # started or saw (an unreaped leader holds its PID; others are matched by start time)
        family = {d: started_at(d) for m in self.procs for d in descendants(m.proc.pid)}
        for m in self.procs:
            if m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(m.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for m in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # The group may hold children (superexec) even after the leader is gone; a group
        # whose leader is reaped is left to the token sweep below.
        for m in self.procs:
            if m.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(m.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=5)
        for pid, start in family.items():
            if start is not None and started_at(pid) == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        watchdog.sweep(self.token)  # descendants that left the tree (reparented to PID 1)
        self.procs.clear()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self._spawner is not None:
            self._spawner.shutdown()
            self._spawner = None


def started_at(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when it is gone): with
    the PID, it names one process, never a later one that reuses the PID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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
