"""The checkpoint store: manifest contract, hashes, completeness, refusal of bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.errors import CheckpointError
from shared.ml.models import build_model
from shared.ml.spec import InputSpec
from shared.store.checkpoint import ModelEntry, encode_state
from shared.store.folder import CheckpointStore

pytestmark = pytest.mark.unit


def _save(store: CheckpointStore, name: str, kind: str, site: str | None, state) -> ModelEntry:
    spec = build_model("resnet18", 48, 1).spec
    return store.save_model(
        state, name=name, arch="resnet18", kind=kind, site=site, round=1, input=spec, metrics={"val-auc": 0.9}
    )


def test_manifest_contract_and_completeness(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    state = build_model("resnet18", 48, 1).state_dict()
    _save(store, "resnet18-global", "global", None, state)
    assert store.mark_complete(["resnet18"], ["A", "B"]) is False
    for s in "AB":
        _save(store, f"resnet18-local-{s}", "local", s, state)
    assert store.mark_complete(["resnet18"], ["A", "B"]) is True
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["complete"] is True
    entry = m["models"][0]
    assert set(entry) == {
        "name",
        "arch",
        "kind",
        "site",
        "round",
        "file",
        "sha256",
        "bytes",
        "input",
        "metrics",
    }
    assert entry["bytes"] == (tmp_path / entry["file"]).stat().st_size
    assert set(entry["input"]) == {"size", "channels", "mean", "std", "net_size"}
    loaded = store.load(entry["file"], entry["sha256"])
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not list(tmp_path.glob(".*.tmp*"))  # no temp files left behind


def test_tampered_missing_and_malformed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    e = _save(store, "m", "global", None, build_model("resnet18", 48, 1).state_dict())
    data = bytearray((tmp_path / e.file).read_bytes())
    data[100] ^= 1
    (tmp_path / e.file).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        store.load(e.file, e.sha256)
    (tmp_path / e.file).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.load(e.file, e.sha256)
    with pytest.raises(CheckpointError, match="kind"):
        ModelEntry.from_json({**e.to_json(), "kind": "regional"}, "x")
    with pytest.raises(CheckpointError, match="plain name"):
        ModelEntry.from_json({**e.to_json(), "file": "../../etc/passwd"}, "x")


def test_rounds_and_resume_point(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    model = build_model("resnet18", 48, 1)
    for r in (0, 1, 2):
        store.save_round("resnet18", r, model.state_dict(), model.spec, {}, ["A", "B"], {})
    store.update_round_metrics("resnet18", 1, {"val-auc": 0.7, "val-loss": float("nan")})
    assert store.last_round("resnet18")["round"] == 2
    assert store.last_round("densenet121") is None
    r1 = next(r for r in store.read_manifest()["rounds"] if r["round"] == 1)
    assert r1["metrics"] == {"val-auc": 0.7} and r1["sites"] == ["A", "B"]


def test_same_weights_give_the_same_file_bytes(tmp_path: Path) -> None:
    """The file's metadata is one JSON value: safetensors orders several metadata keys
    arbitrarily, which made identical weights hash differently from run to run."""
    state = build_model("resnet18", 48, 1).state_dict()
    files = {
        encode_state(state, {"arch": "resnet18", "input": {"size": 48}, "zz": 1, "a": 2}) for _ in range(6)
    }
    assert len(files) == 1


def test_a_quorum_of_sites_completes_the_store_and_names_the_missing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s")
    state = {"w": torch.zeros(2)}
    kw = {"arch": "r", "input": InputSpec(32, 1, (0.5,), (0.25,)), "metrics": {}}
    store.save_model(state, name="r-global", kind="global", site=None, round=1, **kw)
    for site in "ABC":
        store.save_model(state, name=f"r-local-{site}", kind="local", site=site, round=2, **kw)
    assert store.mark_complete(["r"], ["A", "B", "C", "D"]) is False
    with pytest.raises(CheckpointError, match="missing: r-local-D"):
        store.check_complete()
    assert store.mark_complete(["r"], ["A", "B", "C", "D"], min_sites=3) is True
    assert store.read_manifest()["missing"] == ["r-local-D"]
    store.check_complete()
