"""Flower's console output, readable where it is read as a log.

`docker compose up` interleaves every service's output, and Flower colours its level names
with ANSI escapes and prints an empty "INFO :" line around each message: in a log (compose,
a file, journald) that is noise between the lines that matter. When our stdout is not a
terminal, the SuperLink and SuperNode run as our child, and each of their lines comes
through without escapes and without the empty ones; on a terminal they replace us as
before (`exec`), colours and all. Signals reach the child; its exit code is ours, and we
end when it ends, even if a grandchild still holds the pipe.

A service of several processes (the SuperLink with its SuperExec and the Fleet proxy, a
SuperNode with its SuperExec) runs them all as our children (`run_together`): the
service ends when any of them ends, and takes the others with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from deploy.flower.processes import die_with_parent

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LEVEL_ONLY = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*$")
_LEVEL_PAD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s+")


def strip_escapes(text: str) -> str:
    """The text without terminal escape sequences (Flower's colours)."""
    return _ANSI.sub("", text)


def clean(line: str) -> str | None:
    """The line without escapes and padding; None for a line that says nothing."""
    text = strip_escapes(line).rstrip()
    if not text.strip() or _LEVEL_ONLY.match(text):
        return None
    return _LEVEL_PAD.sub(r"\1: ", text)


@dataclass(frozen=True)
class Child:
    """One process of a host's service: its name (a prefix on its lines, but for the first
    child's), command line and environment."""

    name: str
    cmd: Sequence[str]
    env: Mapping[str, str]


def exec_readable(cmd: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """Become `cmd` on a terminal; elsewhere run it and pass its output on, cleaned."""
    if sys.stdout.isatty():
        os.execvpe(cmd[0], list(cmd), dict(env))
    run_together([Child("", cmd, env)])


def run_together(children: Sequence[Child], started: Callable[[], None] | None = None) -> NoReturn:
    """Run every child (in order), pass their output on (cleaned unless on a terminal; a
    later child's lines behind `[name]`), forward SIGTERM/SIGINT/SIGHUP to all of them,
    and end when the first of them ends, with its exit code, after stopping the others.
    `started` runs once every child is started (the caller's own threads may start there)."""
    procs: list[tuple[Child, subprocess.Popen]] = []
    tty = sys.stdout.isatty()

    def forward(signum: int, _frame: object) -> None:
        for _, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    readers = []
    for i, child in enumerate(children):
        proc = subprocess.Popen(
            list(child.cmd),
            env={**child.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=die_with_parent(),  # killed with us, whatever kills us
        )
        procs.append((child, proc))
        prefix = f"[{child.name}] " if i else ""
        reader = threading.Thread(target=_relay, args=(proc, prefix, tty), daemon=True)
        reader.start()
        readers.append(reader)
    if started is not None:
        started()
    # The children's own children (Flower's SuperExec, its apps) inherit the pipes and may
    # outlive them: end with the first child that ends, not with the pipes.
    first: subprocess.Popen | None = None
    while first is None:
        for _, proc in procs:
            if proc.poll() is not None:
                first = proc
                break
        else:
            time.sleep(0.2)
    for child, proc in procs:
        if proc is not first and proc.poll() is None:
            print(f"{child.name or 'main process'} exited: stopping the others", flush=True)
            break
    _stop([p for _, p in procs if p is not first])
    for reader in readers:
        reader.join(timeout=2.0)
    sys.stdout.flush()
    code = first.returncode
    os._exit(code & 0xFF if code >= 0 else 128 - code)


def _relay(proc: subprocess.Popen, prefix: str, tty: bool) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        text = line.rstrip("\n") if tty else clean(line)
        if text is not None:
            print(prefix + text, flush=True)


def _stop(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM, a grace period, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
