"""Reading a checkpoint store through fsspec (here its in-memory filesystem)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import torch

from attack.pull.fetch import fetch_state, read_manifest
from shared.errors import CheckpointError
from shared.ml.models import build_model
from shared.store.folder import CheckpointStore

pytestmark = pytest.mark.unit


def test_fsspec_url_store(tmp_path: Path) -> None:
    local = CheckpointStore(tmp_path / "store")
    model = build_model("resnet18", 48, 1)
    entry = local.save_model(
        model.state_dict(),
        name="g",
        arch="resnet18",
        kind="global",
        site=None,
        round=3,
        input=model.spec,
        metrics={},
    )
    local.mark_complete(["resnet18"], [])
    fs = fsspec.filesystem("memory")
    for f in ("manifest.json", entry.file):
        fs.pipe(f"/fedattack-test/{f}", (local.root / f).read_bytes())
    snap = read_manifest("memory://fedattack-test")
    assert [m.name for m in snap.models] == ["g"]
    state = fetch_state(snap, snap.models[0], tmp_path / "cache")
    assert torch.equal(state["net.fc.weight"], model.state_dict()["net.fc.weight"])
    assert (tmp_path / "cache" / entry.file).exists()  # verified local copy
    fs.pipe(f"/fedattack-test/{entry.file}", b"tampered")
    (tmp_path / "cache" / entry.file).unlink()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        fetch_state(snap, snap.models[0], tmp_path / "cache")
    with pytest.raises(CheckpointError, match="not found"):
        read_manifest("memory://nowhere-at-all")
