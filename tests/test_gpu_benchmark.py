"""benchmarks/gpu.py, the GPU check of the training path, runs end to end: its CPU smoke
mode (the same code at a tiny size) prints the one table, a row per architecture of the
study and the attack's row over the sources that crafted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.integration
def test_the_gpu_benchmark_smoke_run_prints_its_table() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("arch "))
    rows = [line.split(" | ") for line in lines[header + 2 : header + 6]]
    assert [r[0].strip() for r in rows[:3]] == ["resnet50", "densenet121", "inception_v3"]
    assert rows[2][1].strip() == "75", "InceptionV3 at its own net size"
    for r in rows[:3]:
        assert r[3].strip() == "fp32" and float(r[6]) > 0, r  # the CPU trains in fp32
    assert rows[3][0].strip() == "attack: 3 of 3 sources", rows[3]
