"""The attack trusts only hashed bytes: each checkpoint file describes itself (name, arch,
kind, site, round, input spec) and the manifest must say the same, and a malformed manifest
entry ends in one line naming the model, not a traceback. Real `fedattack attack` runs
against a store written by the real CheckpointStore (resnet18 at 48 px)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.errors import CheckpointError
from shared.ml.models import build_model
from shared.store.checkpoint import ModelEntry, verify_file
from shared.store.folder import CheckpointStore
from tests.cli_helpers import refused
from tests.conftest import REPO, write_config

SIZE = 48


def write_store(root: Path) -> CheckpointStore:
    """A complete little store: one global and one local resnet18."""
    store = CheckpointStore(root)
    model = build_model("resnet18", SIZE, 1)
    for name, kind, site, rnd in (
        ("resnet18-global", "global", None, 1),
        ("resnet18-local-A", "local", "A", 2),
    ):
        store.save_model(
            model.state_dict(), name=name, arch="resnet18", kind=kind, site=site, round=rnd,
            input=model.spec, metrics={},
        )  # fmt: skip
    store.mark_complete(["resnet18"], ["A"])
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("trust") / "store").root


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("trust-cfg")
    return write_config(
        tmp / "cfg.yaml",
        synth_dir,
        tmp / "run",
        **{"data.image_size": SIZE, "attack.max_images_per_dataset": 3, "attack.batch_size": 8},
    )


def edited(store: Path, dest: Path, edit: Any) -> Path:
    """A copy of the store whose manifest entry of resnet18-local-A went through `edit`."""
    shutil.copytree(store, dest)
    m = json.loads((dest / "manifest.json").read_text())
    entry = next(e for e in m["models"] if e["name"] == "resnet18-local-A")
    edit(entry, dest)
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def attack(cfg: Path, store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli.main", "attack", "--config", str(cfg), "--checkpoints", str(store)]
    return subprocess.run(
        [*cmd, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


@pytest.mark.unit
def test_the_file_describes_itself_and_the_manifest_must_agree(store: Path) -> None:
    m = json.loads((store / "manifest.json").read_text())
    entry = ModelEntry.from_json(m["models"][1], "manifest")
    data = (store / entry.file).read_bytes()
    assert entry.bytes == len(data)
    assert verify_file(entry, data, "x")  # agrees: loads
    for key, value, field in (
        ("site", "B", "site"),
        ("kind", "global", "kind"),
        ("round", 7, "round"),
        ("arch", "resnet34", "arch"),
        ("name", "resnet18-local-B", "name"),
    ):
        bad = ModelEntry.from_json({**m["models"][1], key: value}, "manifest")
        with pytest.raises(CheckpointError, match=f"manifest says {field} "):
            verify_file(bad, data, "x")
    spec = {**m["models"][1]["input"], "size": 64}
    with pytest.raises(CheckpointError, match=r"manifest says input\.size 64 but the file says 48"):
        verify_file(ModelEntry.from_json({**m["models"][1], "input": spec}, "m"), data, "x")


def _std(entry: dict, _: Path) -> None:
    entry["input"]["std"] = [0.5]


def _mean_length(entry: dict, _: Path) -> None:
    entry["input"]["mean"] = [0.4, 0.4, 0.4]


@pytest.mark.integration
@pytest.mark.parametrize(
    "edit, needle",
    [
        (_std, "refusing resnet18-local-A: manifest says input.std [0.5] but the file says ["),
        (_mean_length, "refusing resnet18-local-A: manifest input.mean has 3 value(s) [0.4, 0.4, 0.4]"),
    ],
    ids=["std-changed", "mean-of-the-wrong-length"],
)
def test_a_manifest_only_edit_is_refused_or_skipped(store, cfg, tmp_path: Path, edit, needle: str) -> None:
    """Weights and hashes untouched: every sha256 check passes, the description does not."""
    copy = edited(store, tmp_path / "store", edit)
    last = refused(attack(cfg, copy, tmp_path / "out1"), needle, "--skip-bad")
    assert "\n" not in last
    assert not (tmp_path / "out1" / "results.json").exists()
    res = attack(cfg, copy, tmp_path / "out2", "--skip-bad")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    results = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert [s["name"] for s in results["skipped"]] == ["resnet18-local-A"]
    assert needle in results["skipped"][0]["reason"]
    assert [m["name"] for m in results["models"]] == ["resnet18-global"]


def _empty(entry: dict, _: Path) -> None:
    entry["file"] = ""


def _nul(entry: dict, _: Path) -> None:
    entry["file"] = "resnet18-local-A\0.safetensors"


def _folder(entry: dict, store: Path) -> None:
    (store / "folder.safetensors").mkdir()
    entry["file"] = "folder.safetensors"


@pytest.mark.integration
@pytest.mark.parametrize(
    "edit, needles",
    [
        (_empty, ["model resnet18-local-A: 'file' '' is empty"]),
        (_nul, ["model resnet18-local-A: 'file'", "contains a NUL character"]),
        (_folder, ["folder.safetensors: is a folder, not a file"]),
    ],
    ids=["empty", "nul", "folder"],
)
def test_bad_file_values_in_the_manifest(store, cfg, tmp_path: Path, edit, needles: list[str]) -> None:
    copy = edited(store, tmp_path / "store", edit)
    refused(attack(cfg, copy, tmp_path / "out"), *needles)
    assert not (tmp_path / "out" / "results.json").exists()
