"""Defenses inside the federation: adversarial training at the sites, FedProx's proximal
term, FedBN's local BatchNorm. Hand computations for the maths; real Flower federations
(SuperLink + four SuperNodes on loopback, tiny shards) recomputed offline for the
aggregation, as the FedAvg exactness test does (FedProx's on Flower is the FedProx variant
of tests/test_study.py's study)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clients.site import Instructions, train_site
from deploy.local import node_configs
from shared.config.experiment import load_config
from shared.config.run import RunSettings, run_settings_for
from shared.config.training import AdversarialTraining, OptimizerConfig
from shared.errors import ConfigError
from shared.events import read_events
from shared.ml.adversarial import Proximal, batchnorm_statistics_kept, mix, perturb
from shared.ml.batchnorm import personal_keys
from shared.ml.models import build_model
from shared.ml.training import make_optimizer, train_epochs
from shared.ml.wire import to_record
from shared.store.folder import CheckpointStore
from tests.cli_helpers import fedattack
from tests.conftest import write_config
from tests.flower_helpers import tiny_data, tiny_federation_config


def _config(tmp: Path, **overrides) -> Path:
    return write_config(tmp / "cfg.yaml", tmp / "data", tmp / "run", **overrides)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"training.adversarial": {"attack": "pgd", "eps": 0.0, "steps": 3}}, "adversarial.eps"),
        ({"training.adversarial": {"attack": "pgd", "eps": 1.5, "steps": 3}}, "adversarial.eps"),
        ({"training.adversarial": {"attack": "fgsm", "steps": 3}}, "adversarial.steps"),
        ({"training.adversarial": {"attack": "cw"}}, "training.adversarial.attack"),
        ({"training.adversarial": {"share": 0}}, "adversarial.share"),
        ({"federation.strategy": "scaffold"}, "federation.strategy"),
        ({"federation.strategy": "fedprox"}, "proximal_mu"),
        ({"federation.proximal_mu": 0.1}, "proximal_mu"),
    ],
)
def test_bad_defense_settings_fail_at_load_naming_the_key(tmp_path: Path, overrides, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(_config(tmp_path, **overrides))


@pytest.mark.unit
def test_defense_settings_travel_through_the_run_config(tmp_path: Path) -> None:
    cfg = load_config(
        _config(
            tmp_path,
            **{
                "training.adversarial": {"attack": "pgd", "eps": 0.03, "steps": 3, "step_fraction": 0.8},
                "federation.strategy": "fedprox",
                "federation.proximal_mu": 0.01,
            },
        )
    )
    run = run_settings_for(cfg, cfg.federation.architectures[0], tmp_path / "store", False)
    back = RunSettings.from_run_config(run.to_run_config())
    assert back == run
    assert back.training.adversarial == AdversarialTraining("pgd", 0.03, 3, 0.8, 0.5, 1)
    assert back.training_record == {
        "strategy": "fedprox mu 0.01",
        "adversarial": "pgd eps 0.03 steps 3 step 0.8*eps share 0.5 from round 1",
        "calibration": "youden",
    }
    clean = run_settings_for(load_config(_config(tmp_path)), cfg.federation.architectures[0], tmp_path, False)
    assert RunSettings.from_run_config(clean.to_run_config()).training.adversarial is None


@pytest.mark.unit
def test_proximal_term_and_its_gradient_match_a_hand_computation() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    prox = Proximal(model, mu=0.3)
    anchor = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.05]]))
        model.bias.add_(torch.tensor([-0.1, 0.2]))
    term = prox.term(model)
    hand = 0.15 * (0.01 + 0.04 + 0.09 + 0.0025 + 0.01 + 0.04)
    assert float(term.detach()) == pytest.approx(hand, rel=1e-6)
    term.backward()
    for p, a in zip(model.parameters(), anchor, strict=True):
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - a))


@pytest.mark.unit
def test_training_with_fedprox_takes_the_hand_computed_sgd_steps() -> None:
    """Two plain SGD steps: w <- w - lr * (grad CE + mu * (w - w_received))."""
    torch.manual_seed(1)
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 1, 0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    start = [p.detach().clone() for p in model.parameters()]
    mu, lr = 0.5, 0.1
    w = [p.clone() for p in start]
    for _ in range(2):
        ws = [t.clone().requires_grad_(True) for t in w]
        loss = F.cross_entropy(x.flatten(1) @ ws[0].T + ws[1], y)
        grads = torch.autograd.grad(loss, ws)
        w = [t - lr * (g + mu * (t - s)) for t, g, s in zip(w, grads, start, strict=True)]
    loader = [(x, y), (x, y)]
    opt = make_optimizer(model, OptimizerConfig("sgd", lr, 0.0, 0.0))
    train_epochs(model, loader, opt, 1, torch.device("cpu"), proximal=Proximal(model, mu))  # type: ignore[arg-type]
    for p, expected in zip(model.parameters(), w, strict=True):
        torch.testing.assert_close(p.detach(), expected)


@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    torch.manual_seed(2)
    return build_model("resnet18", 32, 1).train()


@pytest.mark.unit
def test_adversarial_images_stay_in_the_ball_and_raise_the_loss(small_model: nn.Module) -> None:
    torch.manual_seed(3)
    x, y = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 0, 1, 1, 0])
    for adv in (AdversarialTraining("fgsm", 0.03, 1, 1.25), AdversarialTraining("pgd", 0.03, 4, 0.5)):
        out = perturb(small_model, x, y, adv, None)
        assert float((out - x).abs().max()) <= 0.03 + 1e-6
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        with torch.no_grad(), batchnorm_statistics_kept(small_model):
            clean = F.cross_entropy(small_model(x), y)
            attacked = F.cross_entropy(small_model(out), y)
        assert float(attacked) > float(clean), adv.attack
    assert all(p.requires_grad for p in small_model.parameters())


@pytest.mark.unit
def test_crafting_leaves_batchnorm_statistics_alone_and_mix_replaces_the_share(
    small_model: nn.Module,
) -> None:
    x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1] * 4)
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    out = mix(small_model, x, y, AdversarialTraining("pgd", 0.02, 2, 0.5, share=0.25), None)
    for k, v in small_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    changed = (out - x).flatten(1).abs().amax(1) > 0
    assert changed.tolist() == [True, True] + [False] * 6


@pytest.mark.unit
def test_personal_keys_are_every_batchnorm_tensor_and_nothing_else() -> None:
    model = build_model("resnet18", 32, 1)
    keys = personal_keys(model)
    assert (
        "net.bn1.weight" in keys and "net.bn1.running_var" in keys and "net.bn1.num_batches_tracked" in keys
    )
    assert not any("conv" in k or k.startswith("net.fc") for k in keys)
    bn_modules = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(keys) == 5 * len(bn_modules)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("defense-data"))


def _federate(tmp: Path, data: Path, rounds: int, **extra) -> tuple:
    cfg_path = tiny_federation_config(tmp, data, ["resnet18"], rounds=rounds, **extra)
    proc = fedattack("federate", "--config", str(cfg_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config(cfg_path)
    return cfg, CheckpointStore(cfg.store_dir)


def _round(store: CheckpointStore, rnd: int) -> dict[str, torch.Tensor]:
    r = next(r for r in store.read_manifest()["rounds"] if r["round"] == rnd)
    return store.load(r["file"], r["sha256"])


def _weighted_mean(states: list[dict[str, torch.Tensor]], weights: list[float], key: str) -> torch.Tensor:
    return sum(s[key].double() * w for s, w in zip(states, weights, strict=True)) / sum(weights)


@pytest.mark.e2e
@pytest.mark.xdist_group("defenses-fedbn")  # a unit of work of its own (tests/conftest.py)
def test_fedbn_with_adversarial_training_on_flower(tmp_path: Path, data: Path) -> None:
    """FedBN + PGD adversarial training, two rounds on a real deployment. Recomputing every
    site offline (same code, seeds, CPU): each round's stored global holds the weighted
    mean of the sites' non-BatchNorm tensors, and in round 2 each site trained with its own
    round-1 BatchNorm, not the global's (the run would not match otherwise)."""
    adv = {"attack": "pgd", "eps": 0.02, "steps": 2, "step_fraction": 0.5, "share": 0.5}
    cfg, store = _federate(tmp_path, data, 2, **{"federation.strategy": "fedbn", "training.adversarial": adv})
    run = RunSettings.from_run_config(run_settings_for(cfg, "resnet18", store.root, False).to_run_config())
    models = store.models()
    assert {m.training["strategy"] for m in models} == {"fedbn"}
    assert all(m.training["adversarial"].startswith("pgd eps 0.02 steps 2") for m in models)
    # the sites validated their personalised versions, not the stored average: a FedBN
    # global keeps argmax (its locals are calibrated on their own validation data)
    glob = next(m for m in models if m.kind == "global")
    assert glob.metrics["val-calibrated"] == 0.0 and glob.metrics["val-threshold"] == 0.0
    assert glob.training["calibration"] == "youden"
    events = read_events(store.events_path)
    own = {(e["round"], e["site"]): e["own-batchnorm"] for e in events if e["event"] == "site-train"}
    assert own == {(r, s): float(r == 2) for r in (1, 2) for s in "ABCD"}
    assert all(e["adversarial"] == 1.0 for e in events if e["event"] == "site-train")

    received = to_record(_round(store, 0))
    kept: dict[str, object] = {}
    for rnd in (1, 2):
        results = []
        for node in node_configs(cfg):
            ask = Instructions(server_round=rnd, personal_bn=True, kept_bn=kept.get(node.site))  # type: ignore[arg-type]
            results.append(train_site(node, run, received, ask))
        stored = _round(store, rnd)
        bn = set(personal_keys(build_model("resnet18", cfg.data.image_size, 1)))
        weights = [r.metrics["num-examples"] for r in results]
        for k, v in stored.items():
            if v.dtype.is_floating_point and k not in bn:
                mean = _weighted_mean([r.state for r in results], weights, k)
                torch.testing.assert_close(v.double(), mean, rtol=1e-4, atol=1e-5, msg=f"round {rnd} {k}")
        for node, r in zip(node_configs(cfg), results, strict=True):
            assert r.personal_bn is not None
            kept[node.site] = to_record(r.personal_bn)
            if rnd == 2:  # trained on from its own BatchNorm: differs from the global's
                key = "net.bn1.weight"
                assert not torch.equal(r.personal_bn[key], stored[key])
        received = to_record(stored)
