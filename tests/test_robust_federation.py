"""Poisoned and broken sites against the server's screening (server.validation), and
Flower's robust aggregators recomputed offline: one real deployment (a SuperLink and four
SuperNodes on loopback, synthetic data at 80 px, resnet18) runs four Flower runs at once,
each with its own store:

- poisoned (FedAvg, 2 rounds, min_sites 3): site A replies NaN weights in round 1, B its
  update times 1e6 in round 2, C a vector one weight short in the fine-tune step;
- fedmedian and fedtrimmedavg (1 round, every site honest);
- krum (1 round, min_sites 4, malicious_sites 1): A replies NaN in the fine-tune step,
  which leaves 3 of the required 4 sites: the run must fail, naming A and why.

Each round-1 global is checked against the sites' updates replayed offline (same code,
same seeds, CPU), as tests/test_federation_e2e.py does for FedAvg. The faults come from a
test-only ClientApp (tests/poison_app.py) in a copy of the app folder: the product's own
ClientApp has no way to corrupt a reply."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from clients.site import Instructions, train_site
from deploy.flower.progress import ProgressPrinter, run_all
from deploy.local import LocalDeployment, node_configs
from shared.config.experiment import ExperimentConfig, load_config
from shared.config.run import RunSettings, run_settings_for
from shared.data.fingerprint import split_fingerprint
from shared.errors import FederationError
from shared.events import read_events
from shared.ml.wire import pack, to_record, unpack
from shared.prep.splits import make_splits
from shared.store.folder import CheckpointStore
from tests.conftest import REPO
from tests.flower_helpers import leftovers, tiny_data, tiny_federation_config

pytestmark = pytest.mark.e2e
ARCH = "resnet18"
VARIANTS = {
    "poisoned": {"federation.rounds": 2, "federation.min_sites": 3},
    "fedmedian": {"federation.strategy": "fedmedian"},
    "fedtrimmedavg": {"federation.strategy": "fedtrimmedavg", "federation.trim_beta": 0.25},
    "krum": {"federation.strategy": "krum", "federation.malicious_sites": 1},
}
FAULTS = {"poisoned": {"A": {1: "nan"}, "B": {2: "scale"}, "C": {3: "shape"}}, "krum": {"A": {2: "nan"}}}


def poisoned_app(dest: Path, plan: dict) -> Path:
    """A copy of the app folder whose ClientApp is tests/poison_app.py, with its plan."""
    for room in ("shared", "server", "clients"):
        shutil.copytree(REPO / room, dest / room, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "poisonapp").mkdir()
    (dest / "poisonapp" / "__init__.py").write_text("")
    shutil.copy(REPO / "tests" / "poison_app.py", dest / "poisonapp" / "app.py")
    (dest / "poisonapp" / "plan.json").write_text(json.dumps(plan))
    text = (REPO / "pyproject.toml").read_text()
    edits = {
        'clientapp = "clients.app:app"': 'clientapp = "poisonapp.app:app"',
        '    "clients/*.py",\n]': '    "clients/*.py",\n    "poisonapp/*.py",\n    "poisonapp/*.json",\n]',
    }
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    (dest / "pyproject.toml").write_text(text)
    return dest


def _federate(cfg: ExperimentConfig, dep: LocalDeployment, store: Path, split: dict, lines: list) -> None:
    progress = ProgressPrinter(CheckpointStore(store).events_path, out=lines.append)
    assert dep.connection is not None
    run_all(cfg, dep.connection, store, False, progress, dep.check_processes, split=split)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """(base config, store per variant, the exception each run ended with or None, the
    progress lines)."""
    tmp = tmp_path_factory.mktemp("robust")
    cfg_path = tiny_federation_config(tmp, tiny_data(tmp), [ARCH], rounds=1)
    base = load_config(cfg_path)
    make_splits(base.data, base.seed, base.splits_dir)
    stores = {name: (base.output_dir / f"store-{name}").absolute() for name in VARIANTS}
    plan = {str(stores[name]): faults for name, faults in FAULTS.items()}
    app = poisoned_app(tmp / "app", plan)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDATTACK_APP_DIR", str(app))
        split = split_fingerprint(base.splits_dir)
        with (
            LocalDeployment(base.output_dir / "deployment", node_configs(base), 1) as dep,
            ThreadPoolExecutor(len(VARIANTS)) as pool,
        ):
            jobs = {
                name: pool.submit(_federate, load_config(cfg_path, o), dep, stores[name], split, lines)
                for name, o in VARIANTS.items()
            }
            outcomes = {name: job.exception() for name, job in jobs.items()}
    assert leftovers(str(base.output_dir)) == []
    return base, {name: CheckpointStore(s) for name, s in stores.items()}, outcomes, lines


@pytest.fixture(scope="module")
def replayed(runs) -> dict[str, tuple[np.ndarray, float]]:
    """Site -> (its round-1 update packed, its training images), replayed offline from the
    stored round-0 global, which every run shares (same seed)."""
    base, stores, _, _ = runs
    r0 = {name: _round(store, 0) for name, store in stores.items()}
    assert len({r["sha256"] for r in r0.values()}) == 1
    store = stores["fedmedian"]
    start = to_record(store.load(r0["fedmedian"]["file"], r0["fedmedian"]["sha256"]))
    run = RunSettings.from_run_config(run_settings_for(base, ARCH, store.root, False).to_run_config())
    out = {}
    for node in node_configs(base):
        result = train_site(node, run, start, Instructions(server_round=1))
        out[node.site] = (pack(result.state).astype(np.float64), result.metrics["num-examples"])
    return out


def _round(store: CheckpointStore, rnd: int) -> dict:
    return next(r for r in store.read_manifest()["rounds"] if r["arch"] == ARCH and r["round"] == rnd)


def _assert_global(store: CheckpointStore, rnd: int, expected: np.ndarray) -> None:
    """The stored round-`rnd` global holds `expected` (packed), floating tensors compared."""
    r = _round(store, rnd)
    stored = store.load(r["file"], r["sha256"])
    want = unpack(expected, stored, "expected")
    for k, v in stored.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v.double(), want[k].double(), rtol=1e-4, atol=1e-5, msg=k)


def _stack(replayed, sites: str = "ABCD") -> np.ndarray:
    return np.stack([replayed[s][0] for s in sites])


def _events(store: CheckpointStore, event: str) -> list[dict]:
    return [r for r in read_events(store.events_path) if r["event"] == event]


def _all_finite(store: CheckpointStore) -> None:
    m = store.read_manifest()
    for entry in m["rounds"] + m["models"]:
        state = store.load(entry["file"], entry["sha256"])
        floats = [v for v in state.values() if v.dtype.is_floating_point]
        assert all(torch.isfinite(v).all() for v in floats), entry["file"]


def test_poisoned_and_broken_replies_are_rejected_by_name_and_the_run_completes(runs, replayed) -> None:
    _, stores, outcomes, lines = runs
    assert outcomes["poisoned"] is None, outcomes["poisoned"]
    store = stores["poisoned"]
    rejected = {(r["site"], r["stage"], r["round"]): r["reason"] for r in _events(store, "site-rejected")}
    assert sorted(rejected) == [("A", "train", 1), ("B", "train", 2), ("C", "finetune", 3)]
    assert "weights hold" in rejected["A", "train", 1] and "NaN" in rejected["A", "train", 1]
    assert "x the round's median" in rejected["B", "train", 2]
    assert "update_norm_multiple" in rejected["B", "train", 2]
    size = replayed["A"][0].size
    assert f"weights of shape ({size - 1},)" in rejected["C", "finetune", 3]
    assert any("site B's reply REJECTED" in line for line in lines)
    m = store.read_manifest()
    assert m["complete"] is True and m["missing"] == [f"{ARCH}-local-C"]
    assert {r["round"]: r["sites"] for r in m["rounds"]} == {0: [], 1: ["B", "C", "D"], 2: ["A", "C", "D"]}
    assert sorted(e.name for e in store.models()) == [f"{ARCH}-global", *(f"{ARCH}-local-{s}" for s in "ABD")]
    _all_finite(store)
    # round 1 is the FedAvg of B, C and D as they trained: the rejected reply took no part
    weights = np.array([replayed[s][1] for s in "BCD"])
    _assert_global(store, 1, (weights[:, None] * _stack(replayed, "BCD")).sum(0) / weights.sum())
    # and the models learn: the global after two rounds validates better than the initial one
    metrics = {r["round"]: r["metrics"] for r in m["rounds"]}
    assert metrics[2]["val-loss"] < metrics[0]["val-loss"]
    assert metrics[2]["val-auc"] > 0.6


def test_fedmedian_is_the_coordinate_median_of_the_site_updates(runs, replayed) -> None:
    _, stores, outcomes, _ = runs
    assert outcomes["fedmedian"] is None, outcomes["fedmedian"]
    store = stores["fedmedian"]
    assert store.read_manifest()["complete"] is True
    assert {e.training["strategy"] for e in store.models()} == {"fedmedian"}
    _assert_global(store, 1, np.median(_stack(replayed), axis=0))


def test_fedtrimmedavg_is_the_trimmed_mean_of_the_site_updates(runs, replayed) -> None:
    """beta 0.25 of four replies cuts one off each end of every coordinate (at four sites a
    trimmed mean that cuts anything is the median: docs/attacks-and-defenses.md)."""
    _, stores, outcomes, _ = runs
    assert outcomes["fedtrimmedavg"] is None, outcomes["fedtrimmedavg"]
    store = stores["fedtrimmedavg"]
    assert {e.training["strategy"] for e in store.models()} == {"fedtrimmedavg beta 0.25"}
    _assert_global(store, 1, scipy.stats.trim_mean(_stack(replayed), 0.25, axis=0))


def test_krum_picks_the_reply_nearest_the_others_and_a_rejection_below_min_sites_fails(
    runs, replayed
) -> None:
    """Krum with f = 1 of 4 replies scores each by its squared distance to its 4 - 1 - 2 = 1
    nearest other; the lowest score's reply is the global. Then A's NaN fine-tune reply
    leaves 3 of the required 4 sites: the run fails with the reason, nothing is stored."""
    _, stores, outcomes, _ = runs
    store = stores["krum"]
    x = _stack(replayed)
    d2 = np.array(
        [
            [np.inf if i == j else float(((a - b) ** 2).sum()) for j, b in enumerate(x)]
            for i, a in enumerate(x)
        ]
    )
    scores = np.sort(d2, axis=1)[:, :1].sum(1)
    best = [i for i, s in enumerate(scores) if s <= scores.min() * (1 + 1e-3)]  # near ties: either
    errors = []
    for i in best:
        try:
            _assert_global(store, 1, x[i])
            break
        except AssertionError as e:
            errors.append(e)
    else:
        raise errors[0]
    failure = outcomes["krum"]
    assert isinstance(failure, FederationError)
    assert f"{ARCH} finetune round 2: 3 of the required 4 sites replied (B, C, D)" in str(failure)
    assert "site A: reply rejected: weights hold" in str(failure)
    m = store.read_manifest()
    assert m["complete"] is False and m["models"] == []
    assert [r["site"] for r in _events(store, "site-rejected")] == ["A"]
    assert "3 of the required 4" in _events(store, "run-failed")[0]["reason"]
