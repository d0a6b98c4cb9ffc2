"""`fedattack` loads torch only for a command that computes: a refused input is answered in
a fraction of a second, and the deployment's own commands (credentials, the SuperLink's and
the sites' launchers, which hand over to Flower's processes) never load it. torch, timm and
torchvision cost ~4 CPU-seconds per process on the 2-core machine (BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
HEAVY = ("torch", "timm", "torchvision")


def _imports(*argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `fedattack ARGV` under -X importtime; its result and the top-level packages it loaded."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli.main", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    loaded = {
        ln.rsplit("|", 1)[1].strip().split(".")[0]
        for ln in res.stderr.splitlines()
        if ln.startswith("import time:") and "|" in ln
    }
    return res, loaded


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["study", "--config", "/nonexistent/c.yaml"],
        ["attack", "--config", "/nonexistent/c.yaml"],
        ["demo", "--config", "/nonexistent/c.yaml"],
        ["federate", "--config", "/nonexistent/c.yaml"],
        ["data", "split", "--config", "/nonexistent/c.yaml"],
    ],
    ids=lambda a: " ".join(a[:1]),
)
def test_a_refused_input_is_answered_without_torch(argv: list[str]) -> None:
    res, loaded = _imports(*argv)
    assert res.returncode == (0 if argv == ["--help"] else 2), res.stderr[-2000:]
    if argv != ["--help"]:
        assert "/nonexistent/c.yaml" in res.stderr.splitlines()[-1]
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_deployment_commands_do_not_load_torch(tmp_path: Path) -> None:
    res, loaded = _imports("deploy", "credentials", "--out", str(tmp_path / "c"), "--san", "fl.example")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "c" / "ca.crt").exists()
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    for argv in (
        ["deploy", "superlink", "--state", str(tmp_path / "s")],  # refused: no TLS and no --insecure
        ["deploy", "supernode", "--site", "A", "--superlink", "x:1", "--data", str(tmp_path / "no")],
    ):
        res, loaded = _imports(*argv)
        assert res.returncode == 2, res.stderr[-2000:]
        assert not loaded & set(HEAVY), (argv[1], sorted(loaded & set(HEAVY)))
