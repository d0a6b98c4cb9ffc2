"""The decision threshold calibrated on validation margins and folded into the head
(shared.ml.calibration): the cut against a brute-force search, the fold against the rule
it stands for, on the three real timm architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from pipeline.demo import model_table
from server.threshold import margin_counts
from shared.errors import FederationError
from shared.ml.calibration import (
    BINS,
    EDGES,
    LIMIT,
    MARGINS,
    bias_key,
    head,
    histogram,
    shift_model,
    shift_state,
    youden_cut,
)
from shared.ml.models import build_model
from shared.ml.spec import InputSpec
from shared.store.checkpoint import ModelEntry

pytestmark = pytest.mark.unit


def _logits(margins: list[float] | np.ndarray) -> np.ndarray:
    m = np.asarray(margins, dtype=np.float64)
    return np.stack([np.zeros_like(m), m], axis=1)


def test_a_hand_example_moves_the_threshold_to_the_gap_nearest_zero() -> None:
    # argmax (cut 0) misses the positive at -0.52; every cut in [-1.0, -0.52) separates
    # the classes; the one nearest 0 on the 0.05 grid is -0.55
    labels = np.array([0, 0, 1, 1])
    cut = youden_cut(histogram(_logits([-2.0, -1.0, -0.52, 1.0]), labels))
    assert cut.threshold == pytest.approx(-0.55)
    assert (cut.sensitivity, cut.specificity, cut.accuracy) == (1.0, 1.0, 1.0)
    assert (cut.argmax_sensitivity, cut.argmax_specificity) == (0.5, 1.0)
    assert cut.n == 4


def test_the_cut_is_the_brute_force_youden_optimum_nearest_zero() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_pos, n_neg = int(rng.integers(3, 40)), int(rng.integers(3, 40))
        m = np.concatenate([rng.normal(-1.0, 2.0, n_neg), rng.normal(1.0 + trial % 3, 2.0, n_pos)])
        labels = np.array([0] * n_neg + [1] * n_pos)
        cut = youden_cut(histogram(_logits(m), labels))
        best, best_t = -1.0, None
        for t in EDGES[1:-1]:  # independent: straight from the raw margins
            sens = float((m[labels == 1] > t).mean())
            spec = float((m[labels == 0] <= t).mean())
            j = sens + spec
            if j > best + 1e-12 or (abs(j - best) <= 1e-12 and abs(t) < abs(best_t)):
                best, best_t = j, t
        assert cut.threshold == pytest.approx(best_t)
        assert cut.sensitivity + cut.specificity == pytest.approx(best)
        assert cut.sensitivity == pytest.approx(float((m[labels == 1] > cut.threshold).mean()))
        assert cut.argmax_sensitivity == pytest.approx(float((m[labels == 1] > 0).mean()))


def test_histogram_counts_every_margin_once_with_open_outer_bins() -> None:
    zero = BINS // 2
    m = np.array([-100.0, -LIMIT, EDGES[zero - 1], 0.0, 0.049, EDGES[zero + 1], LIMIT - 1e-9, 100.0])
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    counts = histogram(_logits(m), labels)
    assert counts.shape == (2, BINS) and counts.sum() == len(m)
    assert counts[0, 0] == 1 and counts[1, 0] == 1  # -100 and -LIMIT share the first bin
    assert counts[0, BINS - 1] == 1 and counts[1, BINS - 1] == 1
    # bins are (EDGES[i], EDGES[i+1]]: a margin on an edge belongs below it
    assert counts[0, zero - 2] == 1  # -0.05
    assert counts[1, zero - 1] == 1  # 0.0: (-0.05, 0]
    assert counts[0, zero] == 1 and counts[1, zero] == 1  # 0.049 and 0.05: (0, 0.05]


def test_a_margin_on_the_cut_counts_as_the_folded_model_decides() -> None:
    # the positive sits exactly on the edge -3.0: at cut -3.0 the folded head gives it a
    # pneumonia logit equal to the other (argmax: no pneumonia), and the counts agree
    labels = np.array([0, 0, 1, 1])
    m = [-5.0, -4.0, -3.0, 2.0]
    cut = youden_cut(histogram(_logits(m), labels))
    assert cut.threshold == pytest.approx(-3.05)  # the cut nearest 0 that still takes it
    assert (cut.sensitivity, cut.specificity) == (1.0, 1.0)
    z = torch.tensor(_logits(m), dtype=torch.float32)
    z[:, 1] -= -3.0  # folding the cut -3.0 instead: that positive is lost, as counted
    assert int(z.argmax(1)[2]) == 0


def test_one_class_or_a_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        youden_cut(histogram(_logits([0.1, 0.2]), np.array([1, 1])))
    with pytest.raises(ValueError, match="shape"):
        youden_cut(np.zeros((2, 10), dtype=np.int64))


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "inception_v3"])
def test_the_folded_threshold_is_the_rule_and_keeps_the_attack_gradient(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 32).eval()
    x = torch.rand(12, 1, 32, 32)
    with torch.no_grad():
        # a trained model's margins are moderate; a random init's can saturate the softmax
        # (InceptionV3's reach 1e3), where the loss has no gradient at all to compare
        fc = head(model)[1]
        scale = 4.0 / float(model(x).abs().max())
        fc.weight.mul_(scale)
        fc.bias.mul_(scale)
        z = model(x)
    m = (z[:, 1] - z[:, 0]).double()
    t = float(m.median())
    state = shift_state(model.state_dict(), bias_key(model), t)
    shifted = build_model(arch, 32).eval()
    shifted.load_state_dict(state)
    copy = build_model(arch, 32).eval()
    copy.load_state_dict(model.state_dict())
    shift_model(copy, t)  # in place, the same fold
    y = torch.ones(len(x), dtype=torch.long)
    grads = []
    for net in (model, shifted, copy):
        xi = x.clone().requires_grad_(True)
        out = net(xi)
        F.cross_entropy(out, y, reduction="sum").backward()
        grads.append(xi.grad.sign())
        if net is not model:
            pred = out.detach().argmax(1)
            margin = m.float()
            decided = (margin - t).abs() > 1e-4  # away from float ties at the cut
            assert torch.equal(pred[decided], (margin > t).long()[decided])
    torch.testing.assert_close(shifted.state_dict()[bias_key(model)], copy.state_dict()[bias_key(model)])
    for g in grads[1:]:  # FGSM's direction: the sign of the input gradient
        assert float((g == grads[0]).double().mean()) > 0.999


def test_the_demo_table_shows_the_threshold_and_the_argmax_figures_before_it() -> None:
    spec = InputSpec(64, 1, (0.5,), (0.25,))
    metrics = {
        "val-auc": 0.81,
        "val-sensitivity": 0.71,
        "val-specificity": 0.80,
        "val-threshold": -1.35,
        "val-sensitivity-argmax": 0.41,
        "val-specificity-argmax": 0.96,
    }
    entry = ModelEntry("inception_v3-local-A", "inception_v3", "local", "A", 4, "f", "0" * 64, spec, metrics)
    table = model_table([entry], {})
    row = next(line for line in table.splitlines() if line.startswith("inception_v3-local-A"))
    assert "-1.35" in row and "0.41" in row and "0.96" in row and "0.71" in row
    assert "all 1 models clear the bar" in table
    below = ModelEntry(
        "x-local-B", "x", "local", "B", 4, "f", "0" * 64, spec, {**metrics, "val-sensitivity": 0.4}
    )
    assert "WARNING: 1 model(s) below the bar" in model_table([below], {})


def _reply(counts: np.ndarray, n_val: float) -> RecordDict:
    return RecordDict(
        {
            "metrics": MetricRecord({"val-examples": n_val}),
            MARGINS: ArrayRecord({"counts": Array(counts)}),
        }
    )


def test_the_server_takes_only_counts_that_match_the_site_s_validation_size() -> None:
    counts = histogram(_logits([-1.0, 0.5, 2.0]), np.array([0, 1, 1]))
    assert margin_counts(_reply(counts, 3.0), "B").sum() == 3
    bad = {
        "inflated": (counts * 1000, 3.0),
        "fractional": (counts.astype(np.float64) * 0.5, 1.5),
        "not a number": (np.full((2, BINS), np.nan), 3.0),
        "negative": (counts - 1, float((counts - 1).sum())),
        "wrong shape": (counts[:, :10], 3.0),
    }
    for what, (c, n) in bad.items():
        with pytest.raises(FederationError, match="site B: margin counts"):
            margin_counts(_reply(c, n), "B")
        assert what
