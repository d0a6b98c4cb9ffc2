"""End-to-end federation on Flower's deployment engine: a real SuperLink and four real
SuperNodes on loopback, synthetic data at 80 px, tiny shards."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.site import Instructions, train_site
from deploy.local import federate, node_configs
from shared.config.experiment import ExperimentConfig, load_config
from shared.config.node import NodeConfig
from shared.config.run import RunSettings, run_settings_for
from shared.data.cache import load_cached
from shared.data.manifest import load_manifest, site_manifest_path
from shared.data.torchdata import make_loader
from shared.errors import FederationError
from shared.ml.batchnorm import pool, recalibrate, statistics
from shared.ml.calibration import bias_key, shift_state
from shared.ml.models import model_from_state
from shared.ml.training import metrics_from_logits, predict, prepare
from shared.ml.wire import to_record
from shared.prep.splits import make_splits
from shared.store.folder import CheckpointStore
from tests.flower_helpers import leftovers, tiny_data, tiny_federation_config

pytestmark = pytest.mark.e2e
ARCHS = ["resnet50", "densenet121", "inception_v3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("fed-data"))


def _val_metrics(cfg, entry, state, site: str, recalibrated: bool = False):
    """A stored model's validation metrics at a site; `recalibrated`: after the site
    re-estimates its BatchNorm statistics on its training data, as a site does with every
    global model it receives. Returns (metrics, n val images, the statistics used).
    Computed as a site computes them: in the layout it trains in (channels_last on the CPU
    too, shared.ml.training.prepare) and on its thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.training.threads or threads)
    try:
        cpu = torch.device("cpu")
        model = prepare(model_from_state(entry.arch, entry.input, state), cpu, training=True).eval()
        m = load_manifest(site_manifest_path(cfg.splits_dir, site))
        val = load_cached(m, "val", cfg.data.image_size, cfg.cache_dir)
        if recalibrated:
            train = load_cached(m, "train", cfg.data.image_size, cfg.cache_dir)
            batch = cfg.training.batch_size * 2
            recalibrate(model, make_loader(train, 1, batch, False, 0, 0), cpu)
        logits, labels = predict(model, make_loader(val, 1, 16, False, 0, 0), cpu)
    finally:
        torch.set_num_threads(threads)
    result = metrics_from_logits(logits, labels)
    stats = (statistics(model), float(len(train)) if recalibrated else None)
    return result, len(val), stats, (logits[:, 1] - logits[:, 0], labels)


@pytest.fixture(scope="module")
def three_arch_store(tmp_path_factory: pytest.TempPathFactory, data: Path):
    tmp = tmp_path_factory.mktemp("fed-3arch")
    cfg = load_config(tiny_federation_config(tmp, data, ARCHS, rounds=1))
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "federate", "--config", str(tmp / "cfg.yaml")],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cfg, CheckpointStore(cfg.store_dir), proc.stdout


def test_three_architectures_give_15_verified_models(three_arch_store) -> None:
    cfg, store, stdout = three_arch_store
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["complete"] is True
    models = store.models()
    assert len(models) == 15
    assert sorted((m.arch, m.kind, m.site) for m in models if m.kind == "global") == [
        (a, "global", None) for a in sorted(ARCHS)
    ]
    assert sum(m.kind == "local" for m in models) == 12
    for m in models:
        state = store.load(m.file, m.sha256)  # checks the hash before parsing
        assert state["net." + next(k[4:] for k in state if k.startswith("net."))] is not None
        assert all(not v.dtype.is_floating_point for k, v in state.items() if "num_batches" in k)
    # live progress was printed: architecture, round, site, loss, AUC
    assert "[densenet121] round 1 site C: trained, loss" in stdout
    assert "AUC" in stdout
    # metrics file and plot next to the checkpoints
    rows = [json.loads(x) for x in (store.root / "metrics.jsonl").read_text().splitlines()]
    assert {r["event"] for r in rows} >= {"site-train", "site-evaluate", "round", "run-done"}
    assert (store.root / "metrics.png").stat().st_size > 10_000
    # each site's device, placed by the launcher (no GPU here: the CPU), in the log and the store
    placed = {s: "cpu" for s in cfg.data.sites}
    assert manifest["devices"] == placed
    assert [r["devices"] for r in rows if r["event"] == "placement"] == [placed]
    assert f"{len(placed)} SuperNodes (A cpu, B cpu" in stdout
    # the local SuperLink kept its state in memory: no database of every model sent
    assert list((cfg.output_dir / "deployment").rglob("*.db")) == []
    assert leftovers(str(cfg.output_dir)) == []


def test_locals_reproduce_their_recorded_metrics_and_differ_from_global(three_arch_store) -> None:
    cfg, store, _ = three_arch_store
    models = {m.name: m for m in store.models()}
    for arch in ARCHS:
        g = models[f"{arch}-global"]
        g_state = store.load(g.file, g.sha256)
        # the demo's config calibrates every model's threshold (shared.ml.calibration): the
        # sites evaluated the global before its threshold was folded in; undo the fold
        assert g.training["calibration"] == "youden"
        received = shift_state(
            g_state, bias_key(model_from_state(arch, g.input, g_state)), -g.metrics["val-threshold"]
        )
        weighted, total = 0.0, 0
        site_stats, site_weights, site_margins = [], [], []
        for site in "ABCD":
            loc = models[f"{arch}-local-{site}"]
            state = store.load(loc.file, loc.sha256)
            result, _, _, _ = _val_metrics(cfg, loc, state, site)
            assert result.loss == pytest.approx(loc.metrics["val-loss"], rel=1e-4, abs=1e-4)
            assert result.accuracy == pytest.approx(loc.metrics["val-accuracy"])
            assert result.sensitivity == pytest.approx(loc.metrics["val-sensitivity"], nan_ok=True)
            assert loc.metrics["val-calibrated"] in (0.0, 1.0)
            diff = max(
                float((state[k].float() - g_state[k].float()).abs().max())
                for k in state
                if state[k].dtype.is_floating_point
            )
            assert diff > 0, f"{loc.name} equals the global model"
            # the global's recorded metrics: each site evaluates it after re-estimating its
            # BatchNorm statistics on its own data
            g_result, n, (stats, n_train), margins = _val_metrics(cfg, g, received, site, recalibrated=True)
            weighted += g_result.loss * n
            total += n
            site_stats.append(stats)
            site_weights.append(n_train)
            site_margins.append(margins)
        assert weighted / total == pytest.approx(g.metrics["val-loss"], rel=1e-4)
        _assert_youden_cut(g.metrics, site_margins)
        # the stored global carries the sites' statistics pooled exactly
        for k, v in pool(site_stats, site_weights).items():
            torch.testing.assert_close(g_state[k], v, rtol=1e-4, atol=1e-5, msg=k)


def _assert_youden_cut(metrics: dict[str, float], site_margins) -> None:
    """The global's recorded threshold is the cut on the 0.05 grid that maximises
    sensitivity + specificity over all sites' validation margins (pneumonia when the margin
    exceeds the cut), nearest 0 among ties:
    recomputed here by brute force from the margins, not from the sites' counts."""
    m = np.concatenate([x for x, _ in site_margins])
    y = np.concatenate([lab for _, lab in site_margins])
    if len(np.unique(y)) < 2:
        assert metrics["val-calibrated"] == 0.0 and metrics["val-threshold"] == 0.0
        return
    best, best_t = -1.0, 0.0
    for t in np.round(np.arange(-15.95, 15.96, 0.05), 2):
        j = float((m[y == 1] > t).mean() + (m[y == 0] <= t).mean())
        if j > best + 1e-9 or (abs(j - best) <= 1e-9 and abs(t) < abs(best_t)):
            best, best_t = j, t
    assert metrics["val-calibrated"] == 1.0
    assert metrics["val-threshold"] == pytest.approx(best_t, abs=1e-9)
    assert metrics["val-sensitivity"] + metrics["val-specificity"] == pytest.approx(best, abs=1e-9)


def test_stored_global_is_the_weighted_mean_of_the_site_updates(three_arch_store) -> None:
    """Recompute each site's round-1 update from the stored round-0 model (same code,
    same seeds, CPU) and check that the stored round-1 global is their FedAvg mean."""
    cfg, store, _ = three_arch_store
    arch = "resnet50"
    manifest = store.read_manifest()
    r0 = next(r for r in manifest["rounds"] if r["arch"] == arch and r["round"] == 0)
    r1 = next(r for r in manifest["rounds"] if r["arch"] == arch and r["round"] == 1)
    assert r1["sites"] == ["A", "B", "C", "D"]
    start = to_record(store.load(r0["file"], r0["sha256"]))
    run = RunSettings.from_run_config(run_settings_for(cfg, arch, store.root, False).to_run_config())
    updates, weights = [], []
    for node in node_configs(cfg):
        result = train_site(node, run, start, Instructions(server_round=1))
        updates.append(result.state)
        weights.append(result.metrics["num-examples"])
    stored = store.load(r1["file"], r1["sha256"])
    total = sum(weights)
    for k, v in stored.items():
        if not v.dtype.is_floating_point:
            continue
        mean = sum(u[k].double() * w for u, w in zip(updates, weights, strict=True)) / total
        torch.testing.assert_close(v.double(), mean, rtol=1e-4, atol=1e-5, msg=k)


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _rounds(store: CheckpointStore, arch: str) -> list[int]:
    try:
        return sorted(r["round"] for r in store.read_manifest()["rounds"] if r["arch"] == arch)
    except Exception:
        return []


@pytest.mark.xdist_group("federation-resume")  # a unit of work of its own (tests/conftest.py)
def test_resume_after_the_server_side_dies(tmp_path: Path, data: Path) -> None:
    cfg_path = tiny_federation_config(tmp_path, data, ["resnet18"], rounds=2)
    cfg = load_config(cfg_path)
    store = CheckpointStore(cfg.store_dir)
    cmd = [sys.executable, "-m", "cli.main", "federate", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: 1 in _rounds(store, "resnet18"), 600, "round 1 checkpoint")
    finally:
        proc.terminate()  # SIGTERM: the CLI stops its SuperLink and SuperNodes
        proc.wait(timeout=120)
    assert proc.returncode != 0
    assert max(_rounds(store, "resnet18")) < 2
    assert leftovers(str(cfg.output_dir)) == []
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = store.read_manifest()
    assert manifest["complete"] is True
    assert _rounds(store, "resnet18") == [0, 1, 2]
    rows = [json.loads(x) for x in (store.root / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r["event"] == "run-start"][-1]
    assert resumed["resume_from"] >= 1
    after = rows[rows.index(resumed) :]
    trained = sorted({r["round"] for r in after if r["event"] == "site-train"})
    assert trained == list(range(resumed["resume_from"] + 1, 3))  # none twice, none skipped
    assert leftovers(str(cfg.output_dir)) == []


def _corrupt_one_image_of_site_b(tmp: Path, **overrides) -> tuple[ExperimentConfig, str]:
    """A config over data of its own in which one of site B's training images is not an
    image; returns the config and that file's path relative to its dataset."""
    data = tiny_data(tmp)
    cfg = load_config(tiny_federation_config(tmp, data, ["resnet18"], **overrides))
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    victim = load_manifest(site_manifest_path(cfg.splits_dir, "B")).part("train")[0]
    (data / "nih" / victim.relpath).write_bytes(b"not a png at all")
    return cfg, victim.relpath


@pytest.mark.xdist_group("federation-dropout")  # a unit of work of its own (tests/conftest.py)
def test_dropout_of_a_site_mid_round_and_an_unreadable_image_skipped(tmp_path: Path) -> None:
    """Site D killed after round 0 with min_sites 3: round 1 is A, B, C, D rejoins; and
    with data.skip_unreadable on, site B trains without its corrupt image and lists it
    (tests/test_federation_e2e.py's bad-node-configs test: without it, the run fails)."""
    cfg, victim = _corrupt_one_image_of_site_b(
        tmp_path,
        rounds=2,
        **{"federation.min_sites": 3, "federation.round_timeout_s": 60, "data.skip_unreadable": True},
    )
    store = CheckpointStore(cfg.store_dir)
    killed = threading.Event()

    def kill_d(dep) -> None:
        def worker() -> None:
            _wait_for(lambda: 0 in _rounds(store, "resnet18"), 300, "round 0")
            dep.group.kill("site-D")  # SIGKILL the SuperNode and its children
            killed.set()
            time.sleep(5)
            dep.start_node(next(n for n in dep.nodes if n.site == "D"))  # rejoins, new id

        threading.Thread(target=worker, daemon=True).start()

    federate(cfg, on_start=kill_d)
    assert killed.is_set()
    rounds = {r["round"]: r for r in store.read_manifest()["rounds"]}
    assert rounds[1]["sites"] == ["A", "B", "C"]
    assert set(rounds[2]["sites"]) >= {"A", "B", "C"}
    assert store.read_manifest()["complete"] is True
    skipped = (cfg.cache_dir / "site_B" / f"train_{cfg.data.image_size}px" / "unreadable.txt").read_text()
    assert victim in skipped
    assert leftovers(str(cfg.output_dir)) == []


@pytest.mark.xdist_group("federation-bad-node-configs")  # a unit of work of its own (tests/conftest.py)
def test_bad_node_configs_fail_the_run_with_the_reason(tmp_path: Path) -> None:
    """Three sites fail, each for its own reason, and the run's error names all three: C
    pins another image size, D's manifest is not there, B holds a corrupt image (named,
    with data.skip_unreadable as the way out)."""
    cfg, victim = _corrupt_one_image_of_site_b(tmp_path, rounds=1, **{"federation.round_timeout_s": 120})
    nodes = node_configs(cfg)
    nodes[2] = NodeConfig("C", nodes[2].manifest, nodes[2].cache_dir, image_size=64)
    nodes[3] = NodeConfig("D", tmp_path / "nowhere" / "site_D.json", nodes[3].cache_dir)
    with pytest.raises(FederationError) as e:
        federate(cfg, nodes=nodes)
    msg = str(e.value)
    assert "1 of the required 4 sites replied" in msg, msg
    assert "pins image-size 64" in msg
    assert "site D" in msg and "site_D.json" in msg
    assert victim in msg and "skip_unreadable" in msg
    assert leftovers(str(cfg.output_dir)) == []
