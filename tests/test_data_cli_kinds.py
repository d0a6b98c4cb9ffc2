"""`fedattack data synth --kind` and `data check` on the new layouts, as a user types them:
the twins of PadChest and VinDr-CXR at four sites, checked; an unknown kind refused in one
line before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


def test_synth_kinds_then_check_prints_every_site(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _cli(
        "data", "synth", "--out", str(data), "--kind", "padchest,vindr", "--patients", "60", "--size", "48"
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in data.iterdir()) == ["padchest", "vindr"]
    raw = yaml.safe_load((REPO / "configs" / "demo-multi.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "run")
    raw["data"]["workers"] = 0
    raw["data"]["split"]["public_fraction"] = 0.0
    raw["data"]["datasets"] = {
        "padchest": {"kind": "padchest", "root": str(data / "padchest"), "sites": ["A", "B"]},
        "vindr": {"kind": "vindr", "root": str(data / "vindr"), "sites": ["C", "D"], "radiologists": "any"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    proc = _cli("data", "check", "--config", str(tmp_path / "cfg.yaml"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for shard in ("site_A", "site_B", "site_C", "site_D", "test_padchest", "test_vindr"):
        assert shard in proc.stdout


def test_unknown_kind_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    proc = _cli("data", "synth", "--out", str(tmp_path / "out"), "--kind", "chexpert,openi")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --kind openi: unknown dataset kind; known: nih, rsna, chexpert, mimic, padchest, vindr"
    ]
    assert not (tmp_path / "out").exists()
