"""Statistics for the reports: every rate with its n and a 95% interval, and the tests
behind the study's claims. Pure numpy; one module for every report (attack, suite, study).

- Wilson score intervals for proportions (transfer cells, sensitivity, specificity).
- Newcombe's hybrid score interval for the difference of two independent proportions.
- DeLong's variance for an AUC interval.
- Percentile bootstrap intervals (fixed seed) for means over models, and a two-way
  cluster (pigeonhole) bootstrap for means over cells that share sources and targets.
- An exact paired sign-flip permutation test for a mean difference over matched pairs.
- Over replicates (seeds): mean, between-replicate sd and Student's t interval.
- Holm's step-down adjustment when a report makes many such tests at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
MIN_CELL = 10  # fewer images than this in a cell: too few for a meaningful interval


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval (NaN when undefined)."""

    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float | None]:
        return {
            k: (None if math.isnan(v) else round(v, 6))
            for k, v in (("value", self.value), ("low", self.low), ("high", self.high))
        }

    def percent(self) -> str:
        """'54.6% [48.1, 60.9]' or 'n/a'."""
        if math.isnan(self.value):
            return "n/a"
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def plain(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


# Student's t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, 9 digits;
# tests/test_replicates.py checks them against scipy where it is installed)
T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
    2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
    2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
    2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
    2.045229642, 2.042272456,
)  # fmt: skip


def t975(df: int) -> float:
    """Student's t 0.975 quantile: the table to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion (within 1e-4)."""
    if df < 1:
        raise ValueError(f"t975: need at least 1 degree of freedom, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Replicated:
    """A figure over independent replicates (seeds): their mean, the between-replicate sd,
    and the t 95% interval of the mean (NaN with fewer than two replicates)."""

    values: tuple[float, ...]
    mean: float
    sd: float
    interval: Interval

    def to_json(self) -> dict[str, object]:
        return {
            "values": [round(v, 6) for v in self.values],
            "mean": self.interval.to_json()["value"],
            "sd": None if math.isnan(self.sd) else round(self.sd, 6),
            "low": self.interval.to_json()["low"],
            "high": self.interval.to_json()["high"],
            "n": len(self.values),
        }


def over_replicates(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> Replicated:
    """Mean, between-replicate sd and t interval of one figure's value per replicate
    (undefined values left out); the interval clipped to the figure's `bounds` (a rate or
    an AUC: [0, 1])."""
    x = [v for v in values if not math.isnan(v)]
    if not x:
        return Replicated((), math.nan, math.nan, NAN_INTERVAL)
    mean = float(np.mean(x))
    if len(x) == 1:
        return Replicated(tuple(x), mean, math.nan, Interval(mean, math.nan, math.nan))
    sd = float(np.std(x, ddof=1))
    half = t975(len(x) - 1) * sd / math.sqrt(len(x))
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return Replicated(tuple(x), mean, sd, Interval(mean, low, high))


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """k successes out of n: the proportion and its Wilson score interval."""
    if n <= 0:
        return NAN_INTERVAL
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> Interval:
    """p1 - p2 for independent samples, with Newcombe's hybrid score interval (his method
    10, built from the two Wilson intervals; Newcombe 1998, Stat Med 17:873)."""
    a, b = wilson(k1, n1, z), wilson(k2, n2, z)
    if math.isnan(a.value) or math.isnan(b.value):
        return NAN_INTERVAL
    d = a.value - b.value
    low = d - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = d + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Interval(d, low, high)


def auc_delong(scores: np.ndarray, labels: np.ndarray, z: float = Z95) -> Interval:
    """ROC AUC (ties count one half) with DeLong's variance; NaN with one class only."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return NAN_INTERVAL
    # psi[i, j] = 1 if pos_i > neg_j, 1/2 if equal, 0 otherwise
    psi = (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = z * math.sqrt(max(var, 0.0))
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half))


def bootstrap_mean(values: Sequence[float], seed: int = 0, reps: int = 10_000) -> Interval:
    """The mean and its percentile bootstrap interval (resampling `values`, fixed seed)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return NAN_INTERVAL
    if len(x) == 1:
        return Interval(float(x[0]), math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(reps, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return Interval(float(x.mean()), float(lo), float(hi))


def _draw_counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """[reps, n]: how often each of n labels is drawn in n draws with replacement."""
    draws = rng.integers(0, n, size=(reps, n)) + n * np.arange(reps)[:, None]
    return np.bincount(draws.ravel(), minlength=reps * n).reshape(reps, n)


def cluster_bootstrap_mean(
    values: Sequence[float], rows: Sequence[str], cols: Sequence[str], seed: int = 0, reps: int = 10_000
) -> Interval:
    """The mean of cell values and a two-way cluster bootstrap interval: each replicate
    draws the row labels (sources) and the column labels (targets) with replacement,
    independently, and averages every cell whose row and column were drawn, a cell
    counting once per draw of its row times once per draw of its column (the pigeonhole
    bootstrap; Owen 2007, Ann Appl Stat 1:502). Cells that share a source or a target move
    together, so the interval is not the too-narrow one of independent cells. A replicate
    that draws no cell is left out; percentile interval, fixed seed."""
    keep = [i for i, v in enumerate(values) if not math.isnan(v)]
    if not keep:
        return NAN_INTERVAL
    x = np.asarray([values[i] for i in keep], dtype=np.float64)
    if len(x) == 1:
        return Interval(float(x[0]), math.nan, math.nan)
    row_names = sorted({rows[i] for i in keep})
    col_names = sorted({cols[i] for i in keep})
    r = np.asarray([row_names.index(rows[i]) for i in keep])
    c = np.asarray([col_names.index(cols[i]) for i in keep])
    sums = np.zeros((len(row_names), len(col_names)))  # a cell's weight is its row's draws
    cells = np.zeros_like(sums)  # times its column's: sums over the grid, per replicate
    np.add.at(sums, (r, c), x)
    np.add.at(cells, (r, c), 1.0)
    rng = np.random.default_rng(seed)
    wr = _draw_counts(rng, len(row_names), reps).astype(np.float64)
    wc = _draw_counts(rng, len(col_names), reps).astype(np.float64)
    total = ((wr @ cells) * wc).sum(axis=1)
    means = ((wr @ sums) * wc).sum(axis=1)[total > 0] / total[total > 0]
    if len(means) == 0:
        return Interval(float(x.mean()), math.nan, math.nan)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return Interval(float(x.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: mean difference (a - b) over n pairs, its bootstrap interval,
    and the two-sided p-value of an exact (or, for many pairs, seeded Monte Carlo)
    sign-flip permutation test of 'no difference'."""

    n: int
    mean_difference: Interval
    p_value: float
    exact: bool

    def significant(self, alpha: float = 0.05) -> bool:
        return not math.isnan(self.p_value) and self.p_value < alpha

    def to_json(self) -> dict[str, object]:
        return {
            "n_pairs": self.n,
            "mean_difference": self.mean_difference.to_json(),
            "p_value": None if math.isnan(self.p_value) else round(self.p_value, 6),
            "exact": self.exact,
            "significant_at_0.05": self.significant(),
        }


def sign_flip_test(
    differences: Sequence[float], seed: int = 0, max_exact: int = 20, reps: int = 100_000
) -> PairedTest:
    """Test mean(differences) = 0 by flipping the sign of each difference (pairs are
    exchangeable under the null). Exact enumeration up to `max_exact` pairs."""
    d = np.asarray([v for v in differences if not math.isnan(v)], dtype=np.float64)
    n = len(d)
    if n == 0:
        return PairedTest(0, NAN_INTERVAL, math.nan, True)
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs(signs @ d) / n
        p = float((stats >= observed - tol).mean())
        exact = True
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(reps, n))
        stats = np.abs(signs @ d) / n
        p = float(((stats >= observed - tol).sum() + 1) / (reps + 1))
        exact = False
    return PairedTest(n, bootstrap_mean(d.tolist(), seed), p, exact)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over the tests given), in the
    order given; NaN (no test) stays NaN and does not count as a test."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out
