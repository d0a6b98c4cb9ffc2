"""FedDF's pieces without Flower: the distillation step on tiny real timm models, the
server's per-architecture average, the config's checks of a heterogeneous federation,
the run settings each site derives from the one run config, and the store's completeness
when each site holds one architecture's local."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch.utils.data import TensorDataset

import clients.app as client_app
from deploy.flower.progress import format_event
from server.feddf import weighted_mean
from shared.config.experiment import load_config
from shared.config.run import RunSettings, run_settings_for
from shared.errors import ConfigError, FederationError
from shared.ml.distill import distil, distillation_loss, ensemble_logits, logits_of, loss_over
from shared.ml.models import build_model
from shared.ml.spec import InputSpec
from shared.ml.wire import to_record
from shared.store.folder import CheckpointStore
from tests.conftest import write_config

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")
ASSIGN = {"A": "resnet18", "B": "resnet18", "C": "mobilenetv3_small_050", "D": "mobilenetv3_small_050"}


def _public(n: int = 24, size: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    return TensorDataset(images, torch.full((n,), -1))  # unlabeled: the labels are never read


def _model(arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, 32, 1)


def _opinionated(arch: str, seed: int) -> torch.nn.Module:
    """A model whose head is drawn wide: untrained timm heads answer ~0 logits for every
    image, trained sites' models do not."""
    model = _model(arch, seed)
    with torch.no_grad():
        for p in model.net.get_classifier().parameters():  # type: ignore[union-attr,operator]
            p.normal_(0.0, 1.0)
    return model


def test_the_teacher_is_the_mean_of_every_models_logits() -> None:
    data = _public(10)
    models = [_model("resnet18", 1), _model("mobilenetv3_small_050", 2), _model("resnet18", 3)]
    x = data.tensors[0]
    with torch.no_grad():
        by_hand = [m.eval()(x) for m in models]
    expected = (by_hand[0] + by_hand[1] + by_hand[2]) / 3
    got = ensemble_logits(models, data, batch_size=4, device=CPU)  # batches of 4, 4, 2: order kept
    assert got.shape == (10, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_of(models[1], data, 3, CPU), by_hand[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(by_hand[0], by_hand[1])  # the architectures disagree: a real mean


def test_the_loss_is_the_tempered_kl_divergence() -> None:
    student = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    for t in (1.0, 3.0):
        p = F.softmax(teacher / t, 1)
        q = F.softmax(student / t, 1)
        by_hand = (p * (p.log() - q.log())).sum(1).mean() * t * t
        torch.testing.assert_close(distillation_loss(student, teacher, t), by_hand)
    assert float(distillation_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_distillation_lowers_the_loss_on_the_public_images_and_moves_the_student() -> None:
    data = _public(24)
    teachers = [_opinionated("resnet18", 11), _opinionated("mobilenetv3_small_050", 12)]
    teacher = ensemble_logits(teachers, data, 8, CPU)
    student = _model("resnet18", 13)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    done = distil(
        student, data, teacher, steps=15, lr=1e-3, temperature=1.0, batch_size=8, device=CPU, seed=5
    )
    assert done.steps == 15 and done.kept_step > 0
    assert done.after < done.before * 0.8, (done.before, done.after)
    assert done.after <= done.last  # the best student measured is the one kept
    # the figures are the loss over every image, before and after, as loss_over measures it
    assert loss_over(student, data, teacher, 1.0, 8, CPU) == pytest.approx(done.after, rel=1e-5)
    moved = [
        k for k, v in student.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])
    ]
    assert any("weight" in k for k in moved)
    # BatchNorm statistics stay the sites' (eval mode while it learns)
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items() if "running_" in k)
    # seeded: the same start, teacher and seed give the same student
    again = _model("resnet18", 13)
    distil(again, data, teacher, steps=15, lr=1e-3, temperature=1.0, batch_size=8, device=CPU, seed=5)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in student.state_dict().items())


def test_a_distillation_that_only_hurts_keeps_the_average() -> None:
    """Early stopping: a step size that throws the student off (its loss, measured along
    the way, never below the start's) leaves the averaged model as it was."""
    data = _public(16)
    teacher = ensemble_logits([_opinionated("resnet18", 21)], data, 8, CPU)
    student = _model("resnet18", 22)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    done = distil(student, data, teacher, steps=3, lr=5.0, temperature=1.0, batch_size=8, device=CPU, seed=1)
    assert not done.last <= done.before, done  # higher, or not even finite
    assert (done.kept_step, done.after) == (0, done.before)
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_distillation_refuses_teacher_logits_for_other_images() -> None:
    with pytest.raises(ValueError, match="24 images but teacher logits for 3"):
        distil(_model("resnet18", 1), _public(24), torch.zeros(3, 2), 1, 1e-3, 1.0, 8, CPU, 0)


def test_the_average_within_an_architecture_is_fedavgs() -> None:
    a, b = np.array([1.0, 2.0, 4.0], np.float32), np.array([3.0, 6.0, 0.0], np.float32)
    got = weighted_mean([a, b], [1.0, 3.0])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [2.5, 5.0, 1.0])


def _config(tmp_path: Path, synth_dir: Path, **overrides: object) -> Path:
    feddf = {
        "federation.strategy": "feddf",
        "federation.architectures": ["resnet18", "mobilenetv3_small_050"],
        "federation.site_architectures": ASSIGN,
        "data.split.public_fraction": 0.2,
    }
    return write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run", **{**feddf, **overrides})


def test_a_heterogeneous_config_loads(tmp_path: Path, synth_dir: Path) -> None:
    cfg = load_config(_config(tmp_path, synth_dir))
    assert cfg.federation.site_architectures == ASSIGN
    assert (cfg.federation.distill_steps, cfg.federation.distill_temperature) == (100, 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"federation.site_architectures": dict.fromkeys("ABCD", "resnet18")},
            r"site_architectures: feddf distils between architectures, but every site trains resnet18; "
            r"assign at least two \(or use strategy fedavg\)",
        ),
        (
            {
                "federation.architectures": ["resnet18"],
                "federation.site_architectures": dict.fromkeys("ABCD", "resnet18"),
            },
            "feddf distils between architectures, but every site trains resnet18",
        ),
        (
            {"federation.site_architectures": {**ASSIGN, "D": "densenet121"}},
            r"site_architectures: D: 'densenet121' must be one of federation.architectures",
        ),
        (
            {"federation.architectures": ["resnet18", "mobilenetv3_small_050", "densenet121"]},
            "architectures: densenet121 is trained by no site in site_architectures",
        ),
        (
            {"federation.site_architectures": {k: v for k, v in ASSIGN.items() if k != "D"}},
            r"federation.site_architectures: leaves out D \(data.sites: A, B, C, D\)",
        ),
        (
            {"federation.site_architectures": {**ASSIGN, "E": "resnet18"}},
            "federation.site_architectures: names no configured site: E",
        ),
        ({"federation.site_architectures": {}}, "federation.site_architectures: leaves out A, B, C, D"),
        (
            {"data.split.public_fraction": 0.0},
            "data.split.public_fraction: feddf distils on the public split",
        ),
        ({"federation.strategy": "fedavg"}, r"site_architectures: only feddf uses it \(strategy is fedavg\)"),
        ({"federation.distill_temperature": 0}, "distill_temperature: must be >= 1, > 0 and > 0"),
    ],
)
def test_bad_heterogeneous_configs_are_refused_at_load(
    tmp_path: Path, synth_dir: Path, overrides: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_config(_config(tmp_path, synth_dir, **overrides))
    assert "\n" not in str(e.value) and "cfg.yaml" in str(e.value)


def test_distillation_settings_belong_to_feddf(tmp_path: Path, synth_dir: Path) -> None:
    path = write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run", **{"federation.distill_steps": 5})
    with pytest.raises(ConfigError, match=r"distill_steps: only feddf uses it \(strategy is fedavg\)"):
        load_config(path)


def test_each_site_derives_its_own_architectures_settings_from_the_one_run(
    tmp_path: Path, synth_dir: Path
) -> None:
    per_arch = {"mobilenetv3_small_050": {"lr": 0.01, "local_epochs": 3, "net_size": 48}}
    cfg = load_config(_config(tmp_path, synth_dir, **{"training.per_arch": per_arch}))
    run = run_settings_for(cfg, "resnet18", tmp_path / "store", False)
    back = RunSettings.from_run_config(run.to_run_config())
    assert back == run
    assert back.assignment == ASSIGN
    assert back.public == tuple(
        str((cfg.splits_dir / f"public_{d}.json").absolute()) for d in ("nih", "rsna")
    )
    assert back.cache == str(cfg.cache_dir.absolute())
    c = back.for_site("C")
    assert (c.arch, c.net_size, c.training.optimizer.lr, c.training.local_epochs) == (
        "mobilenetv3_small_050",
        48,
        0.01,
        3,
    )
    # each architecture's settings are those its own homogeneous FedAvg run would have
    homogeneous = load_config(
        write_config(
            tmp_path / "fedavg.yaml",
            synth_dir,
            tmp_path / "run",
            **{
                "federation.architectures": list(dict.fromkeys(ASSIGN.values())),
                "training.per_arch": per_arch,
            },
        )
    )
    for site, arch in ASSIGN.items():
        own, alone = back.for_site(site), run_settings_for(homogeneous, arch, tmp_path / "store", False)
        assert (own.arch, own.training, own.net_size, own.pretrained) == (
            arch,
            alone.training,
            alone.net_size,
            alone.pretrained,
        )
    with pytest.raises(ConfigError, match="site 'E' has no architecture in key 'site-archs'"):
        back.for_site("E")
    assert "strategy" in back.training_record and back.training_record["strategy"].startswith(
        "feddf steps 100"
    )


def test_a_homogeneous_run_carries_no_assignment(tmp_path: Path, synth_dir: Path) -> None:
    cfg = load_config(write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run"))
    run = run_settings_for(cfg, cfg.federation.architectures[0], tmp_path, False)
    assert (run.site_archs, run.arch_settings, run.public, run.cache) == ((), "", (), "")


def test_the_store_is_complete_with_one_local_per_site_of_its_own_architecture(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    state, spec = {"w": torch.zeros(2)}, InputSpec(32, 1, (0.5,), (0.25,))

    def save(arch: str, kind: str, site: str | None) -> None:
        name = f"{arch}-{kind}" + (f"-{site}" if site else "")
        store.save_model(state, name=name, arch=arch, kind=kind, site=site, round=2, input=spec, metrics={})

    archs, sites = ["resnet18", "mobilenetv3_small_050"], ["A", "B", "C", "D"]
    for arch in archs:
        save(arch, "global", None)
    for site, arch in list(ASSIGN.items())[:3]:
        save(arch, "local", site)
    # D's local is missing: complete only where the quorum allows one site to be missing
    assert store.mark_complete(archs, sites, 4, site_archs=ASSIGN) is False
    assert store.read_manifest()["missing"] == ["mobilenetv3_small_050-local-D"]
    assert store.mark_complete(archs, sites, 3, site_archs=ASSIGN) is True
    save("mobilenetv3_small_050", "local", "D")
    assert store.mark_complete(archs, sites, 4, site_archs=ASSIGN) is True
    # without the assignment, every architecture would want a local from every site
    assert store.mark_complete(archs, sites, 4) is False


@pytest.fixture
def site_a(tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Site A's ClientApp context in a feddf run (A trains resnet18), outside a Flower
    process (its task identity set for the test)."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    cfg = load_config(_config(tmp_path, synth_dir))
    rc = run_settings_for(cfg, "resnet18", tmp_path / "store", False).to_run_config()
    manifest = tmp_path / "site_A.json"
    manifest.write_text("{}")  # the refusals come before the site reads its data
    node: dict[str, bool | float | int | str] = {
        "site": "A",
        "manifest": str(manifest),
        "cache-dir": str(tmp_path / "cache"),
    }
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=rc)


def _train_message(arch: str, weights_of: str) -> Message:
    config = ConfigRecord({"phase": "fedavg", "server-round": 1, "round-offset": 0, "arch": arch})
    arrays = to_record(build_model(weights_of, 32, 1).state_dict())
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type="train")


def test_a_site_refuses_another_architectures_model(site_a: Context) -> None:
    other = "mobilenetv3_small_050"
    refused = f"site A trains resnet18 but the server sent a {other} model; refused"
    with pytest.raises(FederationError, match=refused):
        client_app.train(_train_message(other, other), site_a)
    # weights of another architecture under its own name: they do not fit its model
    with pytest.raises(FederationError, match=r"site A: received \d+ weights, the local model has \d+"):
        client_app.train(_train_message("resnet18", other), site_a)


def test_a_site_says_which_site_it_is(site_a: Context) -> None:
    ask = Message(RecordDict({"config": ConfigRecord({"ask": "site"})}), dst_node_id=1, message_type="query")
    reply = client_app.app(ask, site_a)
    assert dict(reply.content["meta"]) == {"site": "A"}


def test_progress_shows_each_distillation() -> None:
    row = {"event": "distill", "arch": "resnet18", "round": 2, "images": 26, "teachers": 4}
    row |= {"loss-before": 0.35, "loss-after": 0.15}
    assert format_event(row) == (
        "[resnet18] round 2: distilled on 26 public images towards 4 site models, loss 0.350 -> 0.150"
    )
