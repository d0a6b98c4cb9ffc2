"""The server's screening of the sites' replies (server.validation), the robust strategies'
wiring and settings, and the rule that no store holds, and no attack loads, a model that is
not finite. In process, on a tiny model; tests/test_robust_federation.py runs the same
against real Flower runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from server.strategy import (
    SiteAwareFedAvg,
    SiteAwareFedMedian,
    SiteAwareFedTrimmedAvg,
    SiteAwareKrum,
    check_replies,
    make_strategy,
)
from server.validation import EVAL_KEYS, Screen, layout, lower_median, oversized
from shared.config.experiment import load_config
from shared.config.run import RunSettings, run_settings_for
from shared.errors import CheckpointError, ConfigError, FederationError
from shared.events import EventLog, read_events
from shared.ml.batchnorm import statistics
from shared.ml.calibration import MARGINS
from shared.ml.spec import InputSpec
from shared.ml.wire import FLAT_KEY, pack
from shared.store.checkpoint import describe, encode_state, sha256_bytes
from shared.store.folder import CheckpointStore
from tests.cli_helpers import refused
from tests.conftest import write_config
from tests.test_attack_trust import SIZE, attack, write_store

SITES = "ABCD"


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def honest(sent: np.ndarray, seed: int, scale: float = 0.01) -> np.ndarray:
    """A plausible reply: small steps on every weight (counters included, which move by whole batches)."""
    rng = np.random.default_rng(seed)
    return (sent + scale * rng.standard_normal(sent.shape)).astype(np.float32)


def content(x: np.ndarray, site: str = "A", **extra: object) -> RecordDict:
    metrics = {"num-examples": 10.0, "val-examples": 4.0, **{f"global-val-{k}": 0.5 for k in EVAL_KEYS}}
    metrics |= {k: v for k, v in extra.items() if k in metrics}
    records = {k: v for k, v in extra.items() if k not in metrics}
    return RecordDict(
        {
            "arrays": ArrayRecord({FLAT_KEY: Array(x)}),
            "metrics": MetricRecord(metrics),  # type: ignore[arg-type]
            "meta": ConfigRecord({"site": site}),
            **records,  # type: ignore[dict-item]
        }
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("norms", "rejected"),
    [
        ([1.0, 2.0, 3.0, 1e6], ["D"]),  # four sites: the reference is the second smallest, 2
        ([1.0, 2.0, 19.0, 21.0], ["D"]),
        ([0.1, 1.0, 1.2], []),  # three honest sites, one slow: nobody rejected
        ([1.0, 1.1, 50.0], ["C"]),
        ([1.0, 5.0], []),  # two sites: the reference is the smaller one
        ([1.0, 50.0], ["B"]),
        ([3.0], []),  # one reply: nothing to compare it with
        ([0.0, 0.0, 0.0, 0.0], []),  # nothing moved (a fine-tune of zero epochs): accepted
        ([0.0, 0.0, 0.0, 1e-9], ["D"]),
        ([1e-9, 1.0, 1.0, 1.0], []),  # a site that sends (almost) nothing cannot move the reference
    ],
)
def test_the_median_rule(norms: list[float], rejected: list[str]) -> None:
    by_site = {SITES[i]: {"weights": n} for i, n in enumerate(norms)}
    out = oversized(by_site, 10.0)
    assert sorted(out) == rejected
    for site in rejected:
        ref = lower_median(norms)
        assert f"exceeds 10 x the round's median {ref:.4g}" in out[site]
        assert "update_norm_multiple" in out[site]


@pytest.mark.unit
def test_each_broken_reply_is_rejected_with_its_reason() -> None:
    model = tiny_model()
    lay = layout(model, fedbn=False)
    sent = pack(model.state_dict()).astype(np.float32)
    good = {s: honest(sent, i) for i, s in enumerate("BCD")}
    nan, inf = honest(sent, 9), honest(sent, 10)
    nan[[0, 5]] = np.nan
    inf[3] = np.inf
    cases = {
        "nan": (content(nan), "weights hold 2 NaN and 0 infinite values"),
        "inf": (content(inf), "weights hold 0 NaN and 1 infinite values"),
        "short": (content(honest(sent, 11)[:-1]), f"weights of shape ({lay.size - 1},) and dtype float32"),
        "float64": (content(honest(sent, 12).astype(np.float64)), "dtype float64, the global's are"),
        "scaled": (content(sent + 1e6 * (honest(sent, 13) - sent)), "update norm"),
        "weight": (content(honest(sent, 14), **{"num-examples": math.nan}), "metric 'num-examples' is nan"),
        "no weight": (content(honest(sent, 15), **{"num-examples": 0.0}), "must be a finite number > 0"),
        "bn count": (
            content(
                honest(sent, 16), **{"received-bn": ArrayRecord({"flat": Array(np.zeros(lay.bn_size + 1))})}
            ),
            f"received-bn: {lay.bn_size + 1} BatchNorm statistics, the model has {lay.bn_size}",
        ),
        "margins": (
            content(honest(sent, 17), **{MARGINS: ArrayRecord({"counts": Array(np.array([1.0, np.nan]))})}),
            "global-val-margins: counts hold 1 NaN",
        ),
    }
    cases["keys"] = (
        RecordDict({**content(sent), "arrays": ArrayRecord({"w": Array(sent)})}),
        "weights under the keys ['w'], the global's are ['flat']",
    )
    extra_metric = content(honest(sent, 18))
    extra_metric["metrics"]["sneaky"] = 1.0
    cases["extra metric"] = (extra_metric, "metrics named ['sneaky'] unlike the other sites'")
    no_eval = content(honest(sent, 19))
    del no_eval["metrics"]["global-val-auc"]
    cases["no evaluation"] = (no_eval, "no metric 'global-val-auc'")
    finetune_only = ("bn count", "margins")
    for name, (bad, reason) in cases.items():
        replies = {s: content(x, s) for s, x in good.items()} | {"A": bad}
        out = Screen(lay, 10.0).rejections(replies, sent, finetune=name in finetune_only)
        assert list(out) == ["A"], name
        assert reason in out["A"], (name, out["A"])
        if name in finetune_only:  # a FedAvg round's reply carries the weights only
            out = Screen(lay, 10.0).rejections(replies, sent)
            assert "an unexpected array record" in out["A"], name
    assert Screen(lay, 10.0).rejections({s: content(x, s) for s, x in good.items()}, sent) == {}


@pytest.mark.unit
def test_counters_do_not_count_and_fedbn_judges_batchnorm_apart() -> None:
    model = tiny_model()
    sent = pack(model.state_dict()).astype(np.float32)
    flat, fedbn = layout(model, False), layout(model, True)
    shared, bn = fedbn.groups["weights"], fedbn.groups["batchnorm"]
    counter = np.ones(flat.size, bool)
    for mask in flat.groups.values():
        counter &= ~mask
    assert counter.sum() == 1  # the one BatchNorm counter is in no group
    replies = {s: honest(sent, i) for i, s in enumerate(SITES)}
    replies["A"][counter] += 1e6  # a site that trained on many more batches
    contents = {s: content(x) for s, x in replies.items()}
    assert Screen(flat, 10.0).rejections(contents, sent) == {}
    # FedBN: each site sends its own BatchNorm, far from the averaged one the server sent;
    # B also scales its shared weights' update 300 times: hidden in one norm, not in two
    for i, s in enumerate(SITES):
        replies[s][bn] += 50.0 * (-1) ** i
    replies["B"][shared] = sent[shared] + 300 * (replies["B"][shared] - sent[shared])
    contents = {s: content(x) for s, x in replies.items()}
    assert Screen(flat, 10.0).rejections(contents, sent) == {}
    out = Screen(fedbn, 10.0).rejections(contents, sent)
    assert list(out) == ["B"] and "(weights)" in out["B"]
    replies["B"] = honest(sent, 1)
    replies["B"][bn] = sent[bn] + 1e6
    out = Screen(fedbn, 10.0).rejections({s: content(x) for s, x in replies.items()}, sent)
    assert list(out) == ["B"] and "(batchnorm)" in out["B"]
    assert fedbn.bn_size == sum(v.numel() for v in statistics(model).values())


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch):
    """Flower messages outside a Flower process (its task identity set for the test)."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)

    def reply(node: int, body: RecordDict) -> Message:
        return Message(body, reply_to=Message(RecordDict(), dst_node_id=node, message_type="train"))

    return reply


def _run(tmp: Path, **overrides: object) -> RunSettings:
    cfg = load_config(write_config(tmp / "cfg.yaml", tmp / "data", tmp / "run", **overrides))
    return run_settings_for(cfg, cfg.federation.architectures[0], tmp / "store", False)


@pytest.mark.unit
def test_rejected_replies_are_recorded_and_count_as_missing_sites(tmp_path: Path, messages) -> None:
    model = tiny_model()
    sent = pack(model.state_dict()).astype(np.float32)
    screen = Screen(layout(model, False), 10.0)
    broken = honest(sent, 9)
    broken[0] = np.nan
    replies = [messages(i + 1, content(honest(sent, i), s)) for i, s in enumerate("DCB")]
    replies += [messages(7, content(broken, "A")), messages(8, content(honest(sent, 8), "../../etc"))]
    events = EventLog(tmp_path / "events.jsonl")
    run = _run(tmp_path, **{"federation.min_sites": 3})
    good = check_replies(replies, run, "train", events, 1, screen, sent)
    assert [r.content["meta"]["site"] for r in good] == ["B", "C", "D"]
    rows = [r for r in read_events(events.path) if r["event"] == "site-rejected"]
    assert [(r["site"], r["stage"], r["round"]) for r in rows] == [("node 8", "train", 1), ("A", "train", 1)]
    assert "'../../etc' is not one of ['A', 'B', 'C', 'D']" in rows[0]["reason"]
    assert "weights hold 1 NaN" in rows[1]["reason"]
    run4 = _run(tmp_path, **{"federation.min_sites": 4})
    with pytest.raises(FederationError) as e:
        check_replies(replies, run4, "finetune", events, 3, screen, sent)
    msg = str(e.value)
    assert f"{run4.arch} finetune round 3: 3 of the required 4 sites replied (B, C, D)" in msg
    assert "site A: reply rejected: weights hold 1 NaN" in msg


@pytest.mark.unit
def test_robust_strategies_are_flowers_own_with_the_configured_parameters(tmp_path: Path, messages) -> None:
    model = tiny_model()
    sent = pack(model.state_dict()).astype(np.float32)
    screen = Screen(layout(model, False), 10.0)
    events = EventLog(tmp_path / "events.jsonl")
    xs = [honest(sent, i) for i in range(4)]
    weights = [10.0, 20.0, 30.0, 40.0]

    def aggregate(**overrides: object) -> tuple[object, np.ndarray]:
        run = _run(tmp_path, **overrides)
        strategy = make_strategy(run, events, 0, screen)
        strategy.sent = sent
        replies = [
            messages(i + 1, content(x, s, **{"num-examples": w}))
            for i, (s, x, w) in enumerate(zip(SITES, xs, weights, strict=True))
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        return strategy, np.asarray(arrays[FLAT_KEY].numpy(), dtype=np.float64)

    stack = np.stack(xs).astype(np.float64)
    strategy, got = aggregate()
    assert isinstance(strategy, SiteAwareFedAvg)
    np.testing.assert_allclose(got, (np.array(weights)[:, None] * stack).sum(0) / sum(weights), rtol=1e-5)
    strategy, got = aggregate(**{"federation.strategy": "fedmedian"})
    assert isinstance(strategy, SiteAwareFedMedian)
    np.testing.assert_allclose(got, np.median(stack, axis=0), rtol=1e-6)
    strategy, got = aggregate(**{"federation.strategy": "fedtrimmedavg", "federation.trim_beta": 0.25})
    assert isinstance(strategy, SiteAwareFedTrimmedAvg) and strategy.beta == 0.25
    np.testing.assert_allclose(got, scipy.stats.trim_mean(stack, 0.25, axis=0), rtol=1e-6)
    strategy, got = aggregate(**{"federation.strategy": "krum", "federation.malicious_sites": 1})
    assert isinstance(strategy, SiteAwareKrum) and strategy.num_malicious_nodes == 1
    assert any(np.array_equal(got, x) for x in stack)
    assert strategy.contributors[1] == list(SITES)


@pytest.mark.unit
def test_an_aggregate_that_is_not_finite_stops_the_run(tmp_path: Path) -> None:
    model = tiny_model()
    run = _run(tmp_path)
    strategy = make_strategy(run, EventLog(tmp_path / "e.jsonl"), 0, Screen(layout(model, False), 10.0))
    strategy.contributors[2] = ["A", "B"]
    x = pack(model.state_dict()).astype(np.float32)
    x[1] = np.inf
    with pytest.raises(
        FederationError, match=r"round 2 \(fedavg of sites A, B\): the aggregated global holds 1"
    ):
        strategy.finite_global(ArrayRecord({FLAT_KEY: Array(x)}), 2)
    with pytest.raises(FederationError, match="the strategy returned no model"):
        strategy.finite_global(None, 2)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"federation.trim_beta": 0.3}, "trim_beta: only fedtrimmedavg uses it"),
        ({"federation.malicious_sites": 1}, "malicious_sites: only krum uses it"),
        ({"federation.strategy": "fedtrimmedavg", "federation.trim_beta": 0.2}, "use at least 1/4"),
        ({"federation.strategy": "fedtrimmedavg", "federation.trim_beta": 0.5}, "must be below 0.5"),
        ({"federation.strategy": "fedtrimmedavg", "federation.min_sites": 2}, "fewer than 3 replies"),
        ({"federation.strategy": "krum", "federation.malicious_sites": 2}, "f must be in 0..1"),
        ({"federation.strategy": "krum", "federation.malicious_sites": -1}, "f must be in"),
        ({"federation.update_norm_multiple": 0.5}, "update_norm_multiple: must be >= 1"),
    ],
)
def test_bad_robust_settings_fail_at_load_naming_the_key(tmp_path: Path, overrides, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write_config(tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "run", **overrides))


@pytest.mark.unit
def test_robust_settings_travel_and_are_recorded(tmp_path: Path) -> None:
    run = _run(tmp_path, **{"federation.strategy": "krum", "federation.malicious_sites": 1})
    back = RunSettings.from_run_config(run.to_run_config())
    assert back.federation.malicious_sites == 1 and back.training_record["strategy"] == "krum f 1"
    run = _run(tmp_path, **{"federation.strategy": "fedtrimmedavg", "federation.trim_beta": 0.4})
    assert run.training_record["strategy"] == "fedtrimmedavg beta 0.4"


@pytest.mark.unit
def test_the_store_never_writes_a_model_that_is_not_finite(tmp_path: Path) -> None:
    model = tiny_model()
    store = CheckpointStore(tmp_path / "store")
    state = dict(model.state_dict())
    state["3.weight"] = state["3.weight"].clone()
    state["3.weight"][0, :3] = torch.nan
    spec = InputSpec(8, 1, (0.5,), (0.25,))
    with pytest.raises(
        CheckpointError, match=r"refusing to store m-global: 1 tensor\(s\) hold NaN or infinite"
    ):
        store.save_model(
            state, name="m-global", arch="m", kind="global", site=None, round=1, input=spec, metrics={}
        )
    with pytest.raises(CheckpointError, match=r"3\.weight \(3 of 96\)"):
        store.save_round("m", 1, state, spec, {}, [], {})
    assert not list(store.root.glob("*.safetensors")) and store.read_manifest()["models"] == []


def nan_store(root: Path) -> Path:
    """A complete store whose resnet18-local-A holds NaN weights, written around the store's
    own refusal (as an older version or a hand would): hashes and descriptions agree."""
    store = write_store(root)
    m = json.loads(store.manifest_path.read_text())
    entry = next(e for e in m["models"] if e["name"] == "resnet18-local-A")
    state = store.load(entry["file"], entry["sha256"])
    state["net.fc.weight"][0, 0] = torch.nan
    info = describe(
        name=entry["name"], arch="resnet18", kind="local", site="A", round=2, spec=store.models()[1].input
    )
    data = encode_state(state, info)
    (root / entry["file"]).write_bytes(data)
    entry["sha256"], entry["bytes"] = sha256_bytes(data), len(data)
    store.manifest_path.write_text(json.dumps(m))
    return root


@pytest.mark.integration
def test_the_attack_refuses_a_model_that_is_not_finite_by_name(tmp_path: Path, synth_dir: Path) -> None:
    cfg = write_config(
        tmp_path / "cfg.yaml",
        synth_dir,
        tmp_path / "run",
        **{"data.image_size": SIZE, "attack.max_images_per_dataset": 3, "attack.batch_size": 8},
    )
    store = nan_store(tmp_path / "store")
    last = refused(attack(cfg, store, tmp_path / "out"), "refusing resnet18-local-A: 1 tensor(s) hold NaN")
    assert "net.fc.weight (1 of " in last and "--skip-bad" in last
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.unit
def test_the_study_takes_robust_strategies_as_variants(tmp_path: Path) -> None:
    from pipeline.study import variant_configs

    study = {
        "variants": [
            {"name": "baseline"},
            {"name": "fedmedian", "overrides": {"federation.strategy": "fedmedian"}},
            {"name": "krum", "overrides": {"federation.strategy": "krum", "federation.malicious_sites": 1}},
        ]
    }
    path = write_config(tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "run", study=study)
    _, cfgs = variant_configs(path, None)
    assert {n: c.federation.strategy for n, c in cfgs.items()} == {
        "baseline": "fedavg",
        "fedmedian": "fedmedian",
        "krum": "krum",
    }
    assert cfgs["krum"].federation.malicious_sites == 1


@pytest.mark.unit
def test_the_store_refuses_to_load_a_model_that_is_not_finite(tmp_path: Path) -> None:
    """A round written by an older version (or by hand) is never resumed from."""
    store = CheckpointStore(tmp_path / "store")
    state = dict(tiny_model().state_dict())
    spec = InputSpec(8, 1, (0.5,), (0.25,))
    store.save_round("m", 1, state, spec, {}, ["A"], {})
    last = store.last_round("m")
    assert last is not None
    state["3.bias"] = torch.tensor([math.inf, 0.0])
    data = encode_state(
        state, describe(name="m-round1", arch="m", kind="round", site=None, round=1, spec=spec)
    )
    (store.root / last["file"]).write_bytes(data)
    with pytest.raises(CheckpointError, match=r"refusing a broken model: 1 tensor\(s\) hold NaN or infinite"):
        store.load(last["file"], sha256_bytes(data))
