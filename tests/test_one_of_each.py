"""One of each: the one iterative attack kernel (the sites' adversarial training and the
attack service's iterative family), the one recipe that finishes a trained model (the
sites' fine-tuned locals and the outsider's surrogates), the one seed function."""

from __future__ import annotations

import ast
import copy
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attack.measure.outsider import public_split, train_outsiders
from attack.methods.iterative import Iterative
from attack.methods.surrogate import Surrogate
from clients.site import Instructions, train_site
from deploy.local import node_configs
from shared.config.experiment import ExperimentConfig, load_config
from shared.config.run import run_settings_for
from shared.config.training import AdversarialTraining
from shared.ml.adversarial import batchnorm_statistics_kept, perturb
from shared.ml.batchnorm import recalibrate, statistics
from shared.ml.calibration import bias_key, histogram, shift_state, youden_cut
from shared.ml.finish import finish
from shared.ml.iterative import iterate
from shared.ml.models import build_model
from shared.ml.training import predict, prepare
from shared.ml.wire import to_record
from shared.prep.splits import make_splits
from shared.seeds import derive_seed
from tests.conftest import REPO, write_config
from tests.test_architecture import module_name, project_files

pytestmark = pytest.mark.unit
CPU = torch.device("cpu")


def _reference_pgd(
    loss: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    start: torch.Tensor,
) -> torch.Tensor:
    """PGD as both copies wrote it before the kernel (attack/methods/iterative.py and
    shared/ml/adversarial.py at ae10f57, torchattacks' PGD): from clip(x + start, 0, 1),
    x' = clip(x + clip(x' + step * sign(grad) - x, -eps, eps), 0, 1)."""
    out = torch.clamp(x + start, 0.0, 1.0).detach()
    for _ in range(steps):
        out.requires_grad_(True)
        (g,) = torch.autograd.grad(loss(out), out)
        out = out.detach() + step * g.sign()
        out = torch.clamp(x + torch.clamp(out - x, -eps, eps), 0.0, 1.0).detach()
    return out


@pytest.fixture(scope="module")
def case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet18", 32, 1), torch.rand(6, 1, 32, 32), torch.tensor([1, 0, 1, 1, 0, 1])


def test_the_attacks_pgd_with_random_start_gives_the_images_it_gave_before(case) -> None:
    model, x, y = case
    model.eval()
    eps, step, steps = 0.03, 0.0075, 4
    ours = Iterative("pgd", eps, steps, step, random_start=True).craft(
        Surrogate([model]), x, y, None, torch.Generator().manual_seed(5)
    )
    start = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(5))
    before = _reference_pgd(lambda z: F.cross_entropy(model(z), y), x, eps, step, steps, start)
    assert torch.equal(ours, before)
    assert not torch.equal(ours, x)


@pytest.mark.parametrize(
    "adv", [AdversarialTraining("fgsm", 0.03, 1, 1.25), AdversarialTraining("pgd", 0.03, 4, 0.5)]
)
def test_adversarial_training_gives_the_images_it_gave_before(case, adv: AdversarialTraining) -> None:
    """The training path: the model in training mode (BatchNorm on batch statistics, its
    running statistics kept), the class-weighted loss, the start drawn on the CPU."""
    model, x, y = case
    model.train()
    weight = torch.tensor([0.7, 1.4])
    ours = perturb(model, x, y, adv, weight, torch.Generator().manual_seed(5))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    with batchnorm_statistics_kept(model):
        before = _reference_pgd(
            lambda z: F.cross_entropy(model(z), y, weight=weight),
            x,
            adv.eps,
            adv.eps * adv.step_fraction,
            adv.steps,
            (noise * 2 - 1) * adv.eps,
        )
    assert torch.equal(ours, before)


def test_the_kernel_refuses_a_clean_gradient_with_a_random_start(case) -> None:
    model, x, _ = case
    with pytest.raises(ValueError, match="first_gradient"):
        iterate(lambda z: model(z).sum(), x, 0.03, 0.01, 2, start=torch.zeros_like(x), first_gradient=x)


def _tiny_data(n: int, labels: list[int], seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    y = torch.tensor(labels)
    x[y == 1, :, 8:24, 8:24] += 0.5  # something to rank by
    return DataLoader(TensorDataset(x.clamp(0, 1), y), batch_size=8)


def test_finishing_reestimates_batchnorm_and_folds_the_threshold(case) -> None:
    model = copy.deepcopy(case[0]).train()
    train, val = _tiny_data(16, [0, 1] * 8, 1), _tiny_data(12, [0, 0, 1] * 4, 2)
    fresh = copy.deepcopy(model)
    recalibrate(fresh, train, CPU)
    unfolded, labels = predict(fresh, val, CPU)
    done = finish(model, val, CPU, calibrate=True, batchnorm=train)
    for key, value in statistics(fresh).items():
        assert torch.equal(statistics(model)[key], value), key
    cut = youden_cut(histogram(unfolded, labels))
    assert done.cut == cut and cut.threshold != 0.0
    key = bias_key(model)
    assert torch.equal(model.state_dict()[key], shift_state(fresh.state_dict(), key, cut.threshold)[key])
    folded, _ = predict(model, val, CPU)
    torch.testing.assert_close(torch.from_numpy(done.logits), torch.from_numpy(folded), rtol=0, atol=1e-5)
    margin = unfolded[:, 1] - unfolded[:, 0]
    assert ((folded.argmax(1) == 1) == (margin > cut.threshold)).all()


def test_finishing_with_one_class_keeps_argmax(case) -> None:
    model = copy.deepcopy(case[0]).eval()
    before = copy.deepcopy(model.state_dict())
    done = finish(model, _tiny_data(8, [1] * 8, 3), CPU, calibrate=True)
    assert done.cut is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _config(tmp: Path, synth_dir: Path, calibration: str, **extra: object) -> ExperimentConfig:
    overrides = {
        "data.image_size": 32,
        "federation.architectures": ["resnet18"],
        "training.batch_size": 8,
        "training.threads": 1,
        "training.calibration": calibration,
        **extra,
    }
    return load_config(write_config(tmp / f"{calibration}.yaml", synth_dir, tmp / "run", **overrides))


def _equal_but_the_fold(folded: dict, plain: dict, key: str, threshold: float) -> None:
    assert folded.keys() == plain.keys()
    assert all(torch.equal(folded[k], plain[k]) for k in plain if k != key)
    assert threshold != 0.0 and torch.equal(folded[key], shift_state(plain, key, threshold)[key])


def test_a_sites_finetuned_local_is_the_trained_model_with_its_threshold_folded(
    tmp_path: Path, synth_dir: Path
) -> None:
    """The same fine-tune message with and without calibration: the same training (same
    seeds), and the calibrated local differs only by its cut, folded into its head."""
    runs = {}
    for calibration in ("youden", "none"):
        cfg = _config(tmp_path, synth_dir, calibration)
        if calibration == "youden":
            make_splits(cfg.data, cfg.seed, cfg.splits_dir)
        runs[calibration] = run_settings_for(cfg, "resnet18", tmp_path / "store", False)
    torch.manual_seed(0)
    received = to_record(build_model("resnet18", 32, 1).state_dict())
    node = node_configs(cfg)[0]
    ask = Instructions(server_round=2, finetune=True)
    folded, plain = (train_site(node, runs[c], received, ask) for c in ("youden", "none"))
    assert folded.metrics["val-calibrated"] == 1.0
    key = bias_key(build_model("resnet18", 32, 1))
    _equal_but_the_fold(folded.state, plain.state, key, folded.metrics["val-threshold"])


def test_an_outsider_surrogate_is_finished_like_a_site_model(tmp_path: Path, synth_dir: Path) -> None:
    """Its BatchNorm statistics are a fresh re-estimation for its final weights on the
    public training images; its threshold is the cut on its public validation logits,
    folded into its head (compared with the same surrogate trained uncalibrated)."""
    extra = {"data.split.public_fraction": 0.3, "attack.outsider.epochs": 2, "attack.outsider.batch_size": 8}
    models = {}
    for calibration in ("youden", "none"):
        cfg = _config(tmp_path, synth_dir, calibration, **extra)
        if calibration == "youden":
            make_splits(cfg.data, cfg.seed, cfg.splits_dir)
        models[calibration] = train_outsiders(cfg, tmp_path / calibration, ("resnet18",))["resnet18"]
    train, _ = public_split(cfg, "train")
    val, _ = public_split(cfg, "val")
    batch = cfg.attack.outsider.batch_size
    fresh = prepare(copy.deepcopy(models["none"]), CPU, training=True)  # the layout it trained in
    recalibrate(fresh, DataLoader(train, batch_size=batch), CPU)
    for key, value in statistics(fresh).items():
        assert torch.equal(statistics(models["youden"])[key], value), key
    cut = youden_cut(histogram(*predict(fresh, DataLoader(val, batch_size=2 * batch), CPU)))
    key = bias_key(models["none"])
    _equal_but_the_fold(models["youden"].state_dict(), models["none"].state_dict(), key, cut.threshold)


def test_the_seed_function_reproduces_the_documented_formulas() -> None:
    base = 9
    assert derive_seed(base, "site-torch", server_round=3, site=2) == 9 * 10_000 + 3 * 10 + 2
    assert derive_seed(base, "site-torch", server_round=4, site=1, finetune=True) == 90_000 + 40 + 1 + 5
    assert derive_seed(base, "site-shuffle", server_round=3, site=2) == 9 + 300 + 2
    assert derive_seed(base, "outsider-torch") == 9 + 991
    assert derive_seed(base, "outsider-shuffle") == 9 + 17
    digest = hashlib.sha256(b"9:pgd:0.03:global-resnet18").digest()
    assert (
        derive_seed(base, "attack", "pgd", 0.03, "global-resnet18")
        == int.from_bytes(digest[:8], "little") >> 1
    )
    assert 0 <= derive_seed(base, "attack", "control", "nih/a.png") < 2**63


@pytest.mark.parametrize(
    ("stream", "labels", "parts"),
    [
        ("site-torch", ("x",), {}),
        ("attack", (), {}),
        ("attack", ("x",), {"server_round": 1}),
        ("outsider-torch", (), {"site": 1}),
        ("site-shuffle", (), {"finetune": True}),
    ],
)
def test_the_seed_function_refuses_parts_its_stream_does_not_take(stream, labels, parts) -> None:
    with pytest.raises(ValueError, match=stream):
        derive_seed(1, stream, *labels, **parts)


def _bound_at_top(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names a module defines, names it imports), at its top level (ifs and trys included)."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and node.col_offset == 0:
            imported |= {a.asname or a.name.split(".")[0] for a in node.names}
    for node in tree.body:
        for sub in [node] if isinstance(node, ast.FunctionDef | ast.ClassDef) else ast.walk(node):
            if isinstance(sub, ast.FunctionDef | ast.ClassDef) and sub.col_offset == 0:
                defined.add(sub.name)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                defined.add(sub.id)
    return defined, imported


def test_every_name_is_imported_from_the_module_that_defines_it() -> None:
    """No re-export shims: a name imported from a project module is defined there."""
    files = project_files(REPO) + sorted((REPO / "tests").glob("*.py")) + sorted(REPO.glob("benchmarks/*.py"))
    trees = {module_name(p, REPO): ast.parse(p.read_text()) for p in files}
    bound = {m: _bound_at_top(t) for m, t in trees.items()}
    shims = [
        f"{m}: {node.module}.{a.name}"
        for m, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in bound
        for a in node.names
        if f"{node.module}.{a.name}" not in trees and a.name not in bound[node.module][0]
    ]
    assert shims == [], "import these names from the modules that define them"
