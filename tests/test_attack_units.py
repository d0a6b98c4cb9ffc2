"""The attack's maths: FGSM against torchattacks, and the transferability arithmetic on a
hand-built case whose predictions are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attack.attacks import FGSM, build_attack
from attack.report import matrix_csv
from attack.transfer import AttackSet, LoadedModel, measure
from shared.checkpoint import ModelEntry
from shared.config import load_config
from shared.errors import AttackError, ConfigError
from shared.models import InputSpec, build_model
from tests.conftest import REPO


def test_fgsm_matches_torchattacks_bit_for_bit() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    model = build_model("resnet18", image_size=48, channels=1).eval()
    x = torch.rand(6, 1, 48, 48)
    y = torch.tensor([1, 0, 1, 1, 0, 1])
    ours = FGSM(eps=0.02)(model, x, y)
    ref = torchattacks.FGSM(model, eps=0.02)(x, y)
    assert torch.equal(ours, ref)
    assert float((ours - x).abs().max()) <= 0.02 + 1e-7
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0


def test_fgsm_does_not_touch_model_state() -> None:
    model = build_model("resnet18", image_size=48, channels=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FGSM(eps=0.05)(model, torch.rand(2, 1, 48, 48), torch.tensor([1, 1]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_eps_outside_range_is_a_config_error(eps: float) -> None:
    with pytest.raises(ConfigError, match=r"attack\.eps"):
        load_config(REPO / "configs" / "demo.yaml", {"attack.eps": eps})


def test_unknown_attack_names_the_registered_ones() -> None:
    with pytest.raises(AttackError, match=r"unknown attack 'pgd-9000'.*fgsm"):
        build_attack("pgd-9000", 0.02)


class MeanThreshold(nn.Module):
    """Predicts pneumonia iff the image mean exceeds `t`; FGSM on it lowers every pixel."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t
        self.w = nn.Parameter(torch.tensor(50.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.w * (x.mean(dim=(1, 2, 3)) - self.t)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _entry(name: str) -> ModelEntry:
    return ModelEntry(
        name, "toy", "local", "A", 1, f"{name}.safetensors", "0" * 64, InputSpec(4, 1, (0.0,), (1.0,)), {}
    )


def test_transferability_arithmetic_on_a_known_case() -> None:
    # Four images with means 0.30, 0.50, 0.56, 0.80; FGSM (eps 0.1) lowers each by 0.1.
    means = [0.30, 0.50, 0.56, 0.80]
    images = torch.stack([torch.full((1, 4, 4), m) for m in means])
    data = AttackSet(images, tuple(f"img{i}" for i in range(4)))
    models = [
        LoadedModel(_entry("low"), MeanThreshold(0.45)),  # right on 0.50, 0.56, 0.80
        LoadedModel(_entry("high"), MeanThreshold(0.55)),  # right on 0.56, 0.80
        LoadedModel(_entry("none"), MeanThreshold(0.95)),
    ]  # right on nothing
    m = measure(models, FGSM(eps=0.1), data, batch=3, device=torch.device("cpu"), progress=False)
    cells = {(c.source, c.target): c for c in m.cells}
    assert m.attacked == {"low": ["img1", "img2", "img3"], "high": ["img2", "img3"], "none": []}
    # low's set {0.50, 0.56, 0.80} -> {0.40, 0.46, 0.70}
    # white box: 0.40 falls below 0.45; 0.46 and 0.70 stay above
    assert (cells["low", "low"].n_correct_before, cells["low", "low"].n_misclassified_after) == (3, 1)
    assert cells["low", "low"].transferability == pytest.approx(1 / 3)
    assert (cells["low", "high"].n_correct_before, cells["low", "high"].n_misclassified_after) == (2, 1)
    assert cells["low", "high"].transferability == pytest.approx(1 / 2)
    # high's set {0.56, 0.80} -> {0.46, 0.70}: low still right on both, high loses 0.56
    assert cells["high", "low"].transferability == 0.0
    assert cells["high", "high"].transferability == pytest.approx(1 / 2)
    # a target right on nothing, and a source with nothing to attack: empty, not 0/0
    assert cells["low", "none"].n_correct_before == 0 and cells["low", "none"].transferability is None
    assert cells["none", "low"].transferability is None
    csv_rows = matrix_csv(m).splitlines()
    assert csv_rows[1] == "low,0.3333,0.5000,"


def test_probe_stream_fills_batches_across_sets() -> None:
    from attack.transfer import _stream

    sizes = {"a": 5, "b": 0, "c": 7, "d": 3}
    pieces = list(_stream(sizes, 4))
    assert [sum(s.stop - s.start for _, s in p) for p in pieces] == [4, 4, 4, 3]
    covered: dict[str, list[int]] = {k: [] for k in sizes}
    for piece in pieces:
        for name, s in piece:
            covered[name] += list(range(s.start, s.stop))
    assert covered == {k: list(range(n)) for k, n in sizes.items()}


def test_fused_clean_pass_gives_the_separate_passes_results() -> None:
    """CPU crafting fuses the clean prediction with the attack's forward pass; whatever share
    of a batch is right, it must give the same predictions and steps as a clean pass
    followed by FGSM on the correctly classified images alone."""
    from attack.transfer import FUSE_MIN_CORRECT, clean_and_craft, craft, predict_labels

    torch.manual_seed(1)
    model = build_model("resnet18", image_size=48, channels=1).eval()
    x = torch.rand(20, 1, 48, 48)
    with torch.no_grad():  # about half of the images predicted pneumonia
        score = model(x)[:, 1] - model(x)[:, 0]
        model.net.get_classifier().bias[1] -= float(score.median())
    cpu = torch.device("cpu")
    for batch in (4, 7, 20):  # batches on both sides of FUSE_MIN_CORRECT
        correct, steps = clean_and_craft(model, FGSM(0.02), x, batch, cpu)
        ref_correct = predict_labels(model, x, batch, cpu)
        assert torch.equal(correct, ref_correct)
        ref = craft(model, FGSM(0.02), x[ref_correct], len(x), cpu)
        assert torch.equal(steps, ref), batch
    assert 0 < float(ref_correct.float().mean()) < 1 and FUSE_MIN_CORRECT > 0.5
