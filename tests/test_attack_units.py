"""The measurement's arithmetic on hand-built cases whose predictions are known, the fused
clean pass, the probe stream, and the settings' validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attack.measure.core import (
    AttackSet,
    Probe,
    Settings,
    Target,
    fit_mask,
    predict_pneumonia,
    random_sign,
    stream,
)
from attack.measure.crafting import FUSE_MIN_CORRECT, clean_and_craft, craft
from attack.measure.threats import insider_sources, member_sources
from attack.measure.transfer import measure, warn_if_short
from attack.methods.registry import FGSM, build_attack
from attack.methods.surrogate import Surrogate
from attack.methods.universal import Universal
from attack.reports.study import csv_safe, matrix_csv, md_safe
from shared.config.experiment import load_config
from shared.errors import AttackError, ConfigError
from shared.ml.models import build_model
from tests.conftest import REPO

pytestmark = pytest.mark.unit

CPU = Settings(batch=3, device=torch.device("cpu"), dtype=torch.float32, seed=0, fit_fraction=0.5)


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_eps_outside_range_is_a_config_error(eps: float) -> None:
    with pytest.raises(ConfigError, match=r"attack\.eps"):
        load_config(REPO / "configs" / "demo.yaml", {"attack.eps": eps})


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("attack.iterative.steps", 0, "steps"),
        ("attack.iterative.step_fraction", 1.5, "larger than eps"),
        ("attack.universal.fit_fraction", 0.0, "fit_fraction"),
        ("attack.suite.sweep_eps", [0.01, 2.0], "sweep_eps"),
        ("attack.suite.threats", ["member", "spy"], "unknown threat model 'spy'"),
    ],
)
def test_bad_attack_settings_are_config_errors_naming_the_key(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(REPO / "configs" / "demo.yaml", {key: value})


def test_unknown_attack_names_the_registered_ones() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml").attack
    with pytest.raises(AttackError, match=r"unknown attack 'pgd-9000'; registered: .*fgsm.*uap"):
        build_attack("pgd-9000", 0.02, cfg)


class MeanThreshold(nn.Module):
    """Predicts pneumonia iff the image mean exceeds `t`; every attack on it lowers pixels."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t
        self.w = nn.Parameter(torch.tensor(50.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.w * (x.mean(dim=(1, 2, 3)) - self.t)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _case(means: list[float], thresholds: dict[str, float]) -> tuple[list[Target], AttackSet]:
    images = torch.stack([torch.full((1, 4, 4), m) for m in means])
    data = AttackSet(images, tuple(f"test_x/img{i}" for i in range(len(means))))
    targets = [Target(n, "toy", "local", "A", MeanThreshold(t)) for n, t in thresholds.items()]
    return targets, data


def test_transferability_arithmetic_on_a_known_case() -> None:
    # Four images with means 0.30, 0.50, 0.56, 0.80; FGSM (eps 0.1) lowers each by 0.1.
    targets, data = _case([0.30, 0.50, 0.56, 0.80], {"low": 0.45, "high": 0.55, "none": 0.95})
    m = measure(member_sources(targets), FGSM(eps=0.1), Probe(targets, data, CPU), CPU, progress=False)
    cells = {(c.source, c.target): c for c in m.cells}
    assert m.attacked == {
        "low": ["test_x/img1", "test_x/img2", "test_x/img3"],
        "high": ["test_x/img2", "test_x/img3"],
        "none": [],
    }
    # low's set {0.50, 0.56, 0.80} -> {0.40, 0.46, 0.70}
    # white box: 0.40 falls below 0.45; 0.46 and 0.70 stay above
    assert (cells["low", "low"].n_correct_before, cells["low", "low"].n_misclassified_after) == (3, 1)
    assert cells["low", "low"].white_box and not cells["low", "high"].white_box
    assert (cells["low", "high"].n_correct_before, cells["low", "high"].n_misclassified_after) == (2, 1)
    assert cells["low", "high"].transferability == pytest.approx(1 / 2)
    # high's set {0.56, 0.80} -> {0.46, 0.70}: low still right on both, high loses 0.56
    assert cells["high", "low"].transferability == 0.0
    assert cells["high", "high"].transferability == pytest.approx(1 / 2)
    # a target right on nothing, and a source with nothing to attack: empty, not 0/0
    assert cells["low", "none"].n_correct_before == 0 and cells["low", "none"].transferability is None
    assert cells["none", "low"].transferability is None
    # the control: +-0.1 random signs on a 4x4 image move its mean by at most 0.1, and
    # (seeded per image) the same for every source
    for c in m.cells:
        assert c.n_control_misclassified is not None and 0 <= c.n_control_misclassified <= c.n_correct_before
    assert matrix_csv(m).splitlines()[1] == "low,0.3333,0.5000,"


def test_control_is_seeded_per_image_and_within_the_budget() -> None:
    x = torch.full((1, 8, 8), 0.5)
    a, b = random_sign(x, 0.02, "test_nih/1.png", 7), random_sign(x, 0.02, "test_nih/1.png", 7)
    assert torch.equal(a, b) and not torch.equal(a, random_sign(x, 0.02, "test_nih/2.png", 7))
    assert torch.allclose((a - x).abs(), torch.full_like(x, 0.02))


def test_ensemble_source_and_white_box_cells() -> None:
    targets, data = _case([0.50, 0.56, 0.80], {"g": 0.45, "a": 0.47, "b": 0.55})
    targets = [
        Target(
            t.name,
            t.arch,
            "global" if t.name == "g" else "local",
            None if t.name == "g" else ("A" if t.name == "a" else "B"),
            t.model,
        )
        for t in targets
    ]
    sources = insider_sources(targets, "logits")
    assert [s.name for s in sources] == ["insider-A", "insider-B"]
    assert sources[0].members == ("a", "g")
    m = measure(sources, FGSM(eps=0.1), Probe(targets, data, CPU), CPU, progress=False)
    cells = {(c.source, c.target): c for c in m.cells}
    assert cells["insider-A", "g"].white_box and cells["insider-A", "a"].white_box
    assert not cells["insider-A", "b"].white_box
    # the ensemble (mean logits of thresholds 0.47 and 0.45, i.e. 0.46) is right on all three
    assert len(m.attacked["insider-A"]) == 3


def test_an_insider_holds_only_the_globals_of_its_own_architectures() -> None:
    """Under FedDF a site trains one architecture and receives only that architecture's
    global: its insider ensemble holds that one (under FedAvg, every global)."""
    net = nn.Linear(1, 2)
    feddf = [
        Target("r-global", "r", "global", None, net),
        Target("m-global", "m", "global", None, net),
        Target("r-local-A", "r", "local", "A", net),
        Target("m-local-B", "m", "local", "B", net),
    ]
    assert [s.members for s in insider_sources(feddf, "logits")] == [
        ("r-local-A", "r-global"),
        ("m-local-B", "m-global"),
    ]
    fedavg = [*feddf, Target("m-local-A", "m", "local", "A", net)]
    assert insider_sources(fedavg, "logits")[0].members == ("r-local-A", "m-local-A", "r-global", "m-global")


def test_universal_attack_is_counted_on_held_out_images_only() -> None:
    targets, data = _case([0.50 + 0.01 * i for i in range(12)], {"t": 0.45})
    uap = Universal("uap", 0.1, targeted=False, epochs=2, batch_size=4, step_size=0.05)
    m = measure(member_sources(targets), uap, Probe(targets, data, CPU), CPU, progress=False)
    fit = set(m.fit["t"])
    assert fit and not fit & set(m.attacked["t"])  # disjoint
    assert len(fit) + len(m.attacked["t"]) == 12
    assert set(fit) == {data.ids[i] for i in torch.nonzero(fit_mask(data.ids, 0.5, 0)).flatten().tolist()}


def test_probe_stream_fills_batches_across_sets() -> None:
    sizes = {"a": 5, "b": 0, "c": 7, "d": 3}
    pieces = list(stream(sizes, 4))
    assert [sum(s.stop - s.start for _, s in p) for p in pieces] == [4, 4, 4, 3]
    covered: dict[str, list[int]] = {k: [] for k in sizes}
    for piece in pieces:
        for name, s in piece:
            covered[name] += list(range(s.start, s.stop))
    assert covered == {k: list(range(n)) for k, n in sizes.items()}


def test_fused_clean_pass_gives_the_separate_passes_results() -> None:
    """CPU crafting fuses the clean prediction with the attack's forward pass; whatever share
    of a batch is right, it must give the same predictions and codes as a clean pass
    followed by FGSM on the correctly classified images alone."""
    torch.manual_seed(1)
    model = build_model("resnet18", image_size=48, channels=1).eval()
    x = torch.rand(20, 1, 48, 48)
    with torch.no_grad():  # about half of the images predicted pneumonia
        score = model(x)[:, 1] - model(x)[:, 0]
        model.net.get_classifier().bias[1] -= float(score.median())
    for batch in (4, 7, 20):  # batches on both sides of FUSE_MIN_CORRECT
        s = Settings(batch, torch.device("cpu"), torch.float32, 0, 0.5)
        correct, codes = clean_and_craft(model, FGSM(0.02), x, s, torch.Generator())
        ref_correct = predict_pneumonia(model, x, s)
        assert torch.equal(correct, ref_correct)
        ref = craft(
            Surrogate([model]),
            FGSM(0.02),
            x[ref_correct],
            Settings(len(x), *list(s.__dict__.values())[1:]),
            torch.Generator(),
        )
        assert torch.equal(codes, ref), batch
    assert 0 < float(ref_correct.float().mean()) < 1 and FUSE_MIN_CORRECT > 0.5


def test_names_are_escaped_for_spreadsheets_and_markdown() -> None:
    assert csv_safe('=HYPERLINK("x")').startswith("'") and csv_safe("resnet50-global") == "resnet50-global"
    assert md_safe("a|b") == "a\\|b" and "<" not in md_safe("<script>").replace("\\<", "")


class _Times(nn.Module):
    """`model`'s logits times `c`: the same decisions, a c-times larger margin."""

    def __init__(self, model: nn.Module, c: float) -> None:
        super().__init__()
        self.model, self.c = model, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * self.model(x)


def test_scaled_ensemble_is_not_decided_by_one_members_logit_scale() -> None:
    torch.manual_seed(0)
    # two linear classifiers on 16x16 images: each one's input gradient is its own weights'
    a, b = (nn.Sequential(nn.Flatten(), nn.Linear(256, 2)) for _ in range(2))
    x = torch.rand(8, 1, 16, 16)
    y = torch.ones(8, dtype=torch.long)
    cpu = torch.device("cpu")

    def direction(members: list[nn.Module], mode: str) -> torch.Tensor:
        """The unit input gradient (one image's: a linear model's is the same for all)."""
        sur = Surrogate(members, mode)  # type: ignore[arg-type]
        if sur.needs_scales:
            sur.fit_scales(x, 3, cpu)
        g = sur.input_gradient(x, y)[0].flatten()
        return g / g.norm()

    big_b = _Times(b, 30.0)
    # the scale is the sd of the pneumonia margin, which a constant shift (a folded
    # decision threshold) leaves alone
    with torch.no_grad():
        margin = a(x)[:, 1] - a(x)[:, 0]
        shifted = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
        shifted.load_state_dict(a.state_dict())
        shifted[1].bias += torch.tensor([0.0, 3.0])
    assert Surrogate([a, b], "scaled").fit_scales(x, 3, cpu)[0] == pytest.approx(
        float(margin.std()), rel=1e-5
    )
    assert Surrogate([shifted, b], "scaled").fit_scales(x, 3, cpu)[0] == pytest.approx(
        float(margin.std()), rel=1e-5
    )
    # scaled: multiplying a member's logits by 30 changes nothing (its scale absorbs it)
    base, big = Surrogate([a, b], "scaled"), Surrogate([a, big_b], "scaled")
    scales = base.fit_scales(x, 3, cpu)
    assert big.fit_scales(x, 3, cpu)[1] == pytest.approx(30 * scales[1], rel=1e-4)
    assert torch.allclose(base(x), big(x), atol=1e-5)
    assert float(direction([a, b], "scaled") @ direction([a, big_b], "scaled")) > 0.9999
    # both members count: the gradient is not either member's own
    only_a, only_b = direction([a], "logits"), direction([b], "logits")
    scaled = direction([a, big_b], "scaled")
    assert float(scaled @ only_a) < 0.9 and float(scaled @ only_b) < 0.9
    # the mean of raw logits: the 30x member decides the direction alone
    assert float(direction([a, big_b], "logits") @ only_b) > 0.99
    # a single model: every mode is the plain cross-entropy (torchattacks' operations)
    assert torch.equal(direction([a], "scaled"), only_a) and torch.equal(direction([a], "loss"), only_a)
    # `loss`: the mean of the members' cross-entropies
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(Surrogate([a, big_b], "loss").loss(x, y), (ce(a(x), y) + ce(big_b(x), y)) / 2)
    with pytest.raises(RuntimeError, match="fit_scales"):
        Surrogate([a, b], "scaled")(x)


def test_attack_against_noise_pairs_each_targets_cells_with_their_control() -> None:
    from attack.measure.core import Cell, Measurement
    from attack.reports.suite import _versus
    from attack.reports.tables import over_control

    m = Measurement("pgd", 0.02, ["s1", "s2"], ["t1", "t2", "t3", "t4"])
    m.cells = [
        Cell("s1", "t1", 10, 6, 1, white_box=False),  # 0.6 - 0.1
        Cell("s2", "t1", 10, 4, 1, white_box=False),  # 0.4 - 0.1: t1's mean +0.4
        Cell("s1", "t2", 20, 5, 3, white_box=False),  # +0.1
        Cell("s2", "t2", 20, 20, 0, white_box=True),  # white-box: left out
        Cell("s1", "t3", 12, 1, 4, white_box=False),  # 1/12 - 4/12: noise wins here
        Cell("s2", "t3", 5, 5, 0, white_box=False),  # under 10 images: left out
        Cell("s1", "t4", 4, 4, 0, white_box=False),  # t4 has no usable cell: no pair
    ]
    test = over_control(m, seed=0)
    assert test.n == 3
    assert test.mean_difference.value == pytest.approx((0.4 + 0.1 - 0.25) / 3)
    # 3 pairs: the exact sign-flip p over all 8 sign patterns
    signs = [(a, b, c) for a in (1, -1) for b in (1, -1) for c in (1, -1)]
    observed = abs(0.4 + 0.1 - 0.25)
    expected = sum(abs(a * 0.4 + b * 0.1 - c * 0.25) >= observed - 1e-12 for a, b, c in signs) / 8
    assert test.p_value == pytest.approx(expected) and not test.significant()
    assert "**not significant**" in _versus(test, test.p_value) and "| 3 |" in _versus(test, test.p_value)
    many = Measurement("pgd", 0.02, ["s"], [f"t{i}" for i in range(8)])
    many.cells = [Cell("s", f"t{i}", 10, 5, 0, white_box=False) for i in range(8)]
    assert over_control(many, seed=0).p_value == pytest.approx(2 / 256)
    assert "| significant" in _versus(over_control(many, seed=0), 2 / 256)
    # the verdict follows the Holm-adjusted p given, not the raw one
    assert "**not significant**" in _versus(over_control(many, seed=0), 0.06)


def test_a_universal_perturbation_that_cannot_reach_eps_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """5 epochs of one minibatch (12 fit images, batch 32), sign steps of 0.1 eps: at most
    half the budget (seen on the demo store's ranking); 10 epochs reach it, and Adam's
    steps are not bounded so."""
    short = Universal("uap", 0.02, False, epochs=5, batch_size=32, step_size=0.002)
    with caplog.at_level("WARNING"):
        warn_if_short(short, 12)
    assert "reaches at most 0.01 of eps 0.02" in caplog.text and "12 fit images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        warn_if_short(Universal("uap", 0.02, False, epochs=10, batch_size=32, step_size=0.002), 12)
        warn_if_short(Universal("uap", 0.02, False, epochs=5, batch_size=4, step_size=0.002), 12)
        warn_if_short(Universal("uap", 0.02, False, 1, 32, 0.001, optimizer="adam"), 12)
    assert caplog.text == ""
