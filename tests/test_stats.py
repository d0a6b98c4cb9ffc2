"""The statistics behind every reported figure, against scipy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attack.stats import auc_delong, bootstrap_mean, holm, newcombe, sign_flip_test, wilson
from shared.ml.training import roc_auc

pytestmark = pytest.mark.unit

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 40), (1, 1), (250, 1000)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ours = wilson(k, n)
    ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert ours.value == pytest.approx(k / n)
    assert ours.low == pytest.approx(ref.low, abs=1e-9) and ours.high == pytest.approx(ref.high, abs=1e-9)


def test_wilson_of_nothing_is_undefined() -> None:
    assert math.isnan(wilson(0, 0).value) and wilson(0, 0).percent() == "n/a"


def _delong_by_hand(pos: list[float], neg: list[float]) -> tuple[float, float]:
    """The textbook definition, loop by loop (DeLong, DeLong & Clarke-Pearson 1988)."""

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    m, n = len(pos), len(neg)
    auc = sum(psi(x, y) for x in pos for y in neg) / (m * n)
    v10 = [sum(psi(x, y) for y in neg) / n for x in pos]
    v01 = [sum(psi(x, y) for x in pos) / m for y in neg]
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def test_delong_auc_and_interval_match_the_definition() -> None:
    rng = np.random.default_rng(4)
    labels = np.array([1] * 23 + [0] * 31)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties on purpose
    ours = auc_delong(scores, labels)
    auc, var = _delong_by_hand(scores[labels == 1].tolist(), scores[labels == 0].tolist())
    assert ours.value == pytest.approx(auc) == pytest.approx(roc_auc(scores, labels))
    half = 1.959963984540054 * math.sqrt(var)
    assert ours.low == pytest.approx(max(0, auc - half)) and ours.high == pytest.approx(min(1, auc + half))
    assert math.isnan(auc_delong(scores, np.ones_like(labels)).value)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [0.31, 0.45, 0.52, 0.38, 0.61]
    a, b = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert a == b and a.value == pytest.approx(np.mean(values))
    assert min(values) <= a.low < a.value < a.high <= max(values)
    assert bootstrap_mean([0.5] * 4).low == bootstrap_mean([0.5] * 4).high == 0.5


def test_sign_flip_test_exact_against_hand_case_and_scipy() -> None:
    assert sign_flip_test([1.0, 1.0, 1.0]).p_value == pytest.approx(2 / 8)  # all + or all -
    d = [0.12, -0.03, 0.08, 0.15, 0.02, -0.01, 0.09, 0.04]
    ours = sign_flip_test(d)
    ref = scipy_stats.permutation_test(
        (np.array(d),), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    assert ours.exact and ours.p_value == pytest.approx(ref.pvalue)
    assert ours.significant() == (ref.pvalue < 0.05)


def test_sign_flip_test_monte_carlo_for_many_pairs() -> None:
    rng = np.random.default_rng(0)
    null = sign_flip_test(rng.normal(0, 1, 60).tolist(), seed=1)
    shifted = sign_flip_test(rng.normal(0.8, 1, 60).tolist(), seed=1)
    assert not null.exact and null.p_value > 0.05 and shifted.p_value < 0.001


def test_newcombe_difference_matches_the_published_example() -> None:
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    d = newcombe(56, 70, 48, 80)
    assert d.value == pytest.approx(0.2)
    assert (d.low, d.high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))
    # example (d): 10/10 - 0/10 is 1.0 with the interval 0.6075 to 1.0
    e = newcombe(10, 10, 0, 10)
    assert (e.low, e.high) == (pytest.approx(0.6075, abs=1e-4), pytest.approx(1.0))
    assert math.isnan(newcombe(0, 0, 1, 2).value)


def test_holm_adjustment_by_hand() -> None:
    # sorted 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1, but never below the step before)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, math.nan, 0.6])  # NaN is no test: two tests, not three
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.6)
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_auc_of_non_finite_scores_is_nan_not_a_plausible_figure() -> None:
    """NaN logits (a broken model) used to rank into an AUC of 0.71-1.0 by argsort's order."""
    labels = np.array([0, 1, 0, 1, 1, 0])
    assert math.isnan(roc_auc(np.array([0.1, np.nan, 0.3, 0.9, 0.8, 0.2]), labels))
    assert math.isnan(roc_auc(np.array([0.1, np.inf, 0.3, 0.9, 0.8, 0.2]), labels))
    assert roc_auc(np.array([0.1, 0.7, 0.3, 0.9, 0.8, 0.2]), labels) == 1.0
