"""Flower's console output, readable where it is read as a log.

`docker compose up` interleaves every service's output, and Flower colours its level names
with ANSI escapes and prints an empty "INFO :" line around each message: in a log (compose,
a file, journald) that is noise between the lines that matter. When our stdout is not a
terminal, the SuperLink and SuperNode run as our child, and each of their lines comes
through without escapes and without the empty ones; on a terminal they replace us as
before (`exec`), colours and all. Signals reach the child; its exit code is ours, and we
end when it ends, even if a grandchild still holds the pipe.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import NoReturn

from deploy.processes import die_with_parent

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LEVEL_ONLY = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*$")
_LEVEL_PAD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s+")


def clean(line: str) -> str | None:
    """The line without escapes and padding; None for a line that says nothing."""
    text = _ANSI.sub("", line).rstrip()
    if not text.strip() or _LEVEL_ONLY.match(text):
        return None
    return _LEVEL_PAD.sub(r"\1: ", text)


def exec_readable(cmd: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """Become `cmd` on a terminal; elsewhere run it and pass its output on, cleaned."""
    if sys.stdout.isatty():
        os.execvpe(cmd[0], list(cmd), dict(env))
    proc = subprocess.Popen(
        list(cmd),
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        preexec_fn=die_with_parent(),  # killed with us, whatever kills us
    )

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    stdout = proc.stdout
    assert stdout is not None

    def relay() -> None:
        for line in stdout:
            text = clean(line)
            if text is not None:
                print(text, flush=True)

    # The child's own children (Flower's SuperExec) inherit the pipe and may outlive it:
    # end with the child, not with the pipe, after a moment for its last lines.
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    code = proc.wait()
    reader.join(timeout=2.0)
    sys.stdout.flush()
    os._exit(code & 0xFF if code >= 0 else 128 - code)
