"""Helpers for the end-to-end federation tests (real SuperLink/SuperNode processes)."""

from __future__ import annotations

from pathlib import Path

from shared.prep.synth.twin import synthesize
from tests.conftest import write_config


def tiny_federation_config(tmp: Path, data: Path, archs: list[str], rounds: int, **extra) -> Path:
    """80 px, tiny shards, one torch thread per site, one local epoch: seconds of compute
    per stage (a test that needs models that learn, such as the attack's, asks for more)."""
    overrides = {
        "data.image_size": 80,
        "training.local_epochs": 1,
        "federation.architectures": archs,
        "federation.rounds": rounds,
        "federation.round_timeout_s": 240,
        "training.batch_size": 8,
        "training.threads": 1,
        "data.workers": 0,
        **extra,
    }
    return write_config(tmp / "cfg.yaml", data, tmp / "run", **overrides)


def tiny_data(tmp: Path) -> Path:
    synthesize(tmp / "data", patients=36, size=96, seed=11)
    return tmp / "data"


def leftovers(*needles: str) -> list[str]:
    """Command lines of live processes that mention any of `needles`."""
    found = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = p.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles) and "pytest" not in cmd:
            found.append(f"{p.parent.name}: {cmd[:200]}")
    return found
