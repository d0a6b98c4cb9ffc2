"""The pooled baseline trained for real: a tiny resnet18 on the union of the synthetic twin's
site splits, stored as resnet18-pooled beside a federation's models under the store's
rules (hash in the manifest, the file describing itself, the store complete only once it
is in), kept on resume when its file verifies and retrained when it does not, refused
where a deployment cannot train it, and measured by the attack as a source and a target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from attack.service import run_attack
from deploy.hosts.server import submit
from shared.config.experiment import ExperimentConfig, load_config
from shared.data.manifest import load_manifest, site_manifest_path
from shared.errors import CheckpointError, ConfigError
from shared.ml.models import build_model
from shared.pooled.baseline import initial_model, pooled_name, train_pooled
from shared.prep.splits import make_splits
from shared.store.checkpoint import file_description, verify_file
from shared.store.folder import CheckpointStore
from tests.conftest import write_config

pytestmark = pytest.mark.unit

SIZE = 32
ARCH = "resnet18"


def tiny_config(tmp: Path, synth_dir: Path, **extra: object) -> ExperimentConfig:
    path = write_config(
        tmp / "cfg.yaml",
        synth_dir,
        tmp / "run",
        **{
            "data.image_size": SIZE,
            "federation.architectures": [ARCH],
            "federation.rounds": 2,
            "federation.pooled_baseline": True,
            "training.local_epochs": 1,
            "training.batch_size": 8,
            "training.per_arch": {},
            "attack.max_images_per_dataset": 4,
            "attack.batch_size": 8,
            **extra,
        },
    )
    return load_config(path)


def federation_models(cfg: ExperimentConfig, store: CheckpointStore) -> None:
    """What the ServerApp leaves (untrained weights will do): the global and every local,
    and its completeness check, which expects the pooled model too."""
    model = build_model(ARCH, SIZE, 1)
    for site in (None, *cfg.data.sites):
        name, kind = (f"{ARCH}-global", "global") if site is None else (f"{ARCH}-local-{site}", "local")
        store.save_model(
            model.state_dict(), name=name, arch=ARCH, kind=kind, site=site, round=2, input=model.spec,
            metrics={},
        )  # fmt: skip
    fed = cfg.federation
    assert (
        store.mark_complete(list(fed.architectures), list(cfg.data.sites), fed.min_sites, pooled=True)
        is False
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> ExperimentConfig:
    cfg = tiny_config(tmp_path_factory.mktemp("pooled"), synth_dir)
    make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir)
    store = CheckpointStore(cfg.store_dir)
    federation_models(cfg, store)
    train_pooled(cfg, store)
    return cfg


def _parts(cfg: ExperimentConfig, part: str) -> int:
    return sum(len(load_manifest(site_manifest_path(cfg.splits_dir, s)).part(part)) for s in cfg.data.sites)


def test_a_store_expecting_pooled_models_is_incomplete_without_them(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    model = build_model(ARCH, SIZE, 1)
    for name, kind, site in ((f"{ARCH}-global", "global", None), (f"{ARCH}-local-A", "local", "A")):
        store.save_model(
            model.state_dict(),
            name=name,
            arch=ARCH,
            kind=kind,
            site=site,
            round=1,
            input=model.spec,
            metrics={},
        )
    assert store.mark_complete([ARCH], ["A"]) is True  # without the baseline: as before
    assert store.mark_complete([ARCH], ["A"], pooled=True) is False
    with pytest.raises(CheckpointError, match=f"missing: {ARCH}-pooled"):
        store.check_complete()
    store.save_model(
        model.state_dict(), name=f"{ARCH}-pooled", arch=ARCH, kind="pooled", site=None, round=1,
        input=model.spec, metrics={},
    )  # fmt: skip
    assert store.mark_complete([ARCH], ["A"], pooled=True) is True
    assert store.read_manifest()["expected"]["pooled"] is True


def test_the_pooled_model_is_trained_on_every_sites_data_and_stored_like_the_federations(
    trained: ExperimentConfig,
) -> None:
    store = CheckpointStore(trained.store_dir)
    manifest = store.read_manifest()
    assert manifest["complete"] is True and manifest["missing"] == []
    entry = next(e for e in store.models() if e.kind == "pooled")
    assert (entry.name, entry.arch, entry.site, entry.round) == (pooled_name(ARCH), ARCH, None, 2)
    data = (store.root / entry.file).read_bytes()
    state = verify_file(entry, data, entry.file)  # hash, then the file's own description
    assert file_description(data, entry.file)["kind"] == "pooled"
    m = entry.metrics
    one_site = len(load_manifest(site_manifest_path(trained.splits_dir, "A")).part("train"))
    assert m["num-examples"] == _parts(trained, "train") > one_site
    assert m["val-examples"] == _parts(trained, "val")
    assert 0.0 <= m["val-auc"] <= 1.0 and m["train-seconds"] > 0 and m["adversarial"] == 0.0
    assert "val-threshold" in m and "val-calibrated" in m  # training.calibration: youden, as the sites
    assert entry.training["strategy"] == "central (pooled data)"
    assert entry.training["calibration"] == "youden"
    start = initial_model(trained, ARCH).state_dict()  # the federation's round-0 weights
    assert start.keys() == state.keys()
    assert not torch.equal(start["net.fc.weight"], state["net.fc.weight"])


def test_resume_keeps_a_verified_pooled_model_and_retrains_a_tampered_one(
    trained: ExperimentConfig, tmp_path: Path
) -> None:
    """A retraining from the same config gives the same bytes (the seed fixes init and
    order), so a tampered file is replaced by exactly the model it was."""
    root = tmp_path / "store"
    shutil.copytree(trained.store_dir, root)
    store = CheckpointStore(root)
    before = next(e for e in store.models() if e.kind == "pooled")
    (kept,) = train_pooled(trained, store, resume=True)
    assert kept == before
    path = root / before.file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        store.load(before.file, before.sha256)
    (again,) = train_pooled(trained, store, resume=True)
    assert again.sha256 == before.sha256
    assert store.load(again.file, again.sha256).keys() == store.load(before.file, before.sha256).keys()
    assert store.is_complete()


def test_the_attack_measures_pooled_models_as_sources_and_targets(
    trained: ExperimentConfig, tmp_path: Path
) -> None:
    report = run_attack(trained, str(trained.store_dir), tmp_path / "attack", progress=False)
    results = json.loads((tmp_path / "attack" / "results.json").read_text())
    kinds = {m["name"]: m["kind"] for m in results["models"]}
    assert kinds[pooled_name(ARCH)] == "pooled"
    cells = results["cells"]
    assert any(c["source"] == pooled_name(ARCH) and not c["white_box"] for c in cells)
    assert any(c["target"] == pooled_name(ARCH) and not c["white_box"] for c in cells)
    text = report.read_text()
    assert f"| {ARCH} (pooled) |" in text
    assert "| pooled (central training, not in the test) |" in text


def test_bad_values_and_a_networked_deployment_are_refused(synth_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"federation\.pooled_baseline"):
        tiny_config(tmp_path, synth_dir, **{"federation.pooled_baseline": "yes"})
    with pytest.raises(ConfigError, match=r"federation\.pooled_baselin"):
        tiny_config(tmp_path, synth_dir, **{"federation.pooled_baselin": True})
    assert (
        load_config(write_config(tmp_path / "d.yaml", synth_dir, tmp_path / "d")).federation.pooled_baseline
        is False
    )
    cfg = tiny_config(tmp_path, synth_dir)
    with pytest.raises(ConfigError, match="networked deployment"):  # before any connection
        submit(cfg, "127.0.0.1:9093", None, tmp_path / "store", resume=False)
