"""What a comparison could have detected: the smallest effect the attack-against-noise test
finds with 80% power at its n, and how many attacked images a chosen effect needs.

- The paired test over targets (attack.reports.tables.over_control) is an exact sign-flip
  test: with n targets its smallest two-sided p is 2 / 2^n, so with n <= 5 no effect,
  however large, reaches 0.05 (and after Holm over k tests it needs k * 2 / 2^n < 0.05).
  Where it can, the smallest detectable mean difference is, to the normal approximation,
  (z_{1 - alpha/2} + z_{power}) * sd / sqrt(n), sd the spread of the targets' differences.
- Images: the attack's rate p1 = p0 + effect against the control's p0 on independent
  images, the two-proportion sample size (Fleiss, without continuity correction):
  n = (z_a sqrt(2 pbar qbar) + z_b sqrt(p0 q0 + p1 q1))^2 / effect^2 per cell. Attack and
  control share their images (a paired design needs fewer), so this is an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA, POWER = 0.05, 0.8


def _z(p: float) -> float:
    return NormalDist().inv_cdf(p)


def smallest_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip test over n pairs can give."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


@dataclass(frozen=True)
class Detectable:
    n: int  # pairs (targets)
    tests: int  # tests Holm adjusts over
    possible: bool  # can any effect reach alpha after Holm at this n?
    difference: float | None  # the smallest mean difference detected with `power` (None: none can)

    def text(self) -> str:
        if not self.possible:
            return (
                f"none at n={self.n} (the exact test's smallest p, {smallest_p(self.n):.2g}, "
                f"times {self.tests} tests is above {ALPHA})"
            )
        if self.difference is None:
            return f"n/a (n={self.n})"
        return f"{100 * self.difference:.1f} points (n={self.n})"


def detectable_difference(
    sd: float, n: int, tests: int = 1, alpha: float = ALPHA, power: float = POWER
) -> Detectable:
    """The smallest mean paired difference detected with `power` by the sign-flip test over
    n pairs whose differences spread by `sd`, at `alpha` after Holm over `tests` tests (the
    strictest step: alpha / tests)."""
    level = alpha / max(tests, 1)
    if n < 1 or smallest_p(n) >= level:
        return Detectable(n, tests, False, None)
    if n < 2 or math.isnan(sd):
        return Detectable(n, tests, True, None)
    return Detectable(n, tests, True, (_z(1 - level / 2) + _z(power)) * sd / math.sqrt(n))


def images_needed(effect: float, control: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Attacked images per cell for the attack's rate control + effect to differ from the
    control's with `power` at two-sided `alpha` (independent-proportions bound)."""
    p0, p1 = control, control + effect
    if not (0 <= p0 < 1 and 0 < p1 <= 1 and effect > 0):
        raise ValueError(f"need 0 <= control < control + effect <= 1, got control {control}, effect {effect}")
    pbar = (p0 + p1) / 2
    a = _z(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
    b = _z(power) * math.sqrt(p0 * (1 - p0) + p1 * (1 - p1))
    return math.ceil(((a + b) / effect) ** 2)
