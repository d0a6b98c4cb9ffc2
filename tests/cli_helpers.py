"""Running the installed `fedattack` command in tests, and the shape of a refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def fedattack(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`fedattack ARGS` from the environment's bin folder, no stdin, output captured."""
    return subprocess.run(
        [str(BIN / "fedattack"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def refused(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, one `error:` line holding every needle, no traceback anywhere."""
    text = res.stdout + res.stderr
    assert res.returncode == 2, f"rc {res.returncode}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), res.stderr[-2000:]
    for n in needles:
        assert n in last, f"{n!r} not in {last!r}"
    return last
