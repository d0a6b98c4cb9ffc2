"""The figures as results.json and study.json publish them: rounded to 6 digits, None
where undefined (attack.stats' Interval.to_json), as records made from the statistics,
each with its one JSON form (reading them back: attack.reports.readback). A report that
prints a published figure prints these, so it shows what the JSON holds."""

from __future__ import annotations

from dataclasses import dataclass

from attack.measure.clean import CleanPerformance
from attack.reports.tables import Group
from attack.stats import Interval, PairedTest


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval; None where undefined."""

    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, i: Interval) -> Estimate:
        j = i.to_json()
        return cls(j["value"], j["low"], j["high"])

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}


def shown(d: Estimate | None, scale: float, fmt: str, unit: str = "") -> str:
    """A published interval as text: value [low, high], or the value alone when the
    interval is missing, or n/a."""
    if d is None or d.value is None:
        return "n/a"
    value = f"{scale * d.value:{fmt}}{unit}"
    if d.low is None or d.high is None:
        return f"{value} (no interval)"
    return f"{value} [{scale * d.low:{fmt}}, {scale * d.high:{fmt}}]"


@dataclass(frozen=True)
class CleanFigures:
    """A model's clean test performance (attack.measure.clean.CleanPerformance), published."""

    n_positive: int
    n_negative: int
    auc: Estimate
    sensitivity: Estimate
    specificity: Estimate

    @classmethod
    def of(cls, c: CleanPerformance) -> CleanFigures:
        return cls(
            c.n_positive,
            c.n_negative,
            Estimate.of(c.auc),
            Estimate.of(c.sensitivity),
            Estimate.of(c.specificity),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "auc": self.auc.to_json(),
            "sensitivity": self.sensitivity.to_json(),
            "specificity": self.specificity.to_json(),
        }


@dataclass(frozen=True)
class GroupFigure:
    """A mean over models or cells (attack.reports.tables.Group), published."""

    mean: Estimate
    sd: float
    n: int
    images: int
    control_mean: Estimate

    @classmethod
    def of(cls, g: Group) -> GroupFigure:
        return cls(Estimate.of(g.mean), round(g.sd, 6), g.n, g.images, Estimate.of(g.control))

    def to_json(self) -> dict[str, object]:
        return {
            "mean": self.mean.to_json(),
            "sd": self.sd,
            "n": self.n,
            "images": self.images,
            "control_mean": self.control_mean.to_json(),
        }


@dataclass(frozen=True)
class PairedFigure:
    """A paired sign-flip test (attack.stats.PairedTest), published."""

    n_pairs: int
    mean_difference: Estimate
    p_value: float | None
    exact: bool
    significant: bool  # at 0.05

    @classmethod
    def of(cls, t: PairedTest) -> PairedFigure:
        p = t.to_json()["p_value"]  # rounded, None when there is no test
        return cls(
            t.n, Estimate.of(t.mean_difference), p if isinstance(p, float) else None, t.exact, t.significant()
        )

    def to_json(self) -> dict[str, object]:
        return {
            "n_pairs": self.n_pairs,
            "mean_difference": self.mean_difference.to_json(),
            "p_value": self.p_value,
            "exact": self.exact,
            "significant_at_0.05": self.significant,
        }


@dataclass(frozen=True)
class GlobalVsLocal:
    """Transfer onto global and onto local targets, and the paired test between them."""

    as_target: dict[str, GroupFigure]  # "global", "local" (and "pooled" with pooled models)
    paired_test: PairedFigure  # over sources
    model_level: PairedFigure | None = None  # over architectures (None: not recorded)

    @classmethod
    def of(
        cls, groups: dict[str, Group], test: PairedTest, models: PairedTest | None = None
    ) -> GlobalVsLocal:
        return cls(
            {k: GroupFigure.of(g) for k, g in groups.items()},
            PairedFigure.of(test),
            None if models is None else PairedFigure.of(models),
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "as_target": {k: g.to_json() for k, g in self.as_target.items()},
            "paired_test": self.paired_test.to_json(),
        }
        if self.model_level is not None:
            out["model_level"] = self.model_level.to_json()
        return out
