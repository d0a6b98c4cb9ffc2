"""The study's records: each variant's figures per architecture (VariantSummary), as
attack.reports.variants computes them from the attack's results and study.json publishes
them (rounded, None where undefined), and the study's own metadata; each with its one
JSON form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attack.reports.figures import Estimate, GlobalVsLocal, GroupFigure


@dataclass(frozen=True)
class Counts:
    """Robust accuracy's counts: still right after the attack (k) of right before (n)."""

    k: int
    n: int

    def to_json(self) -> dict[str, int]:
        return {"k": self.k, "n": self.n}


@dataclass(frozen=True)
class LocalAucs:
    """The local models' clean AUCs: mean and range (None without any)."""

    mean: float | None
    min: float | None
    max: float | None
    n_models: int

    def to_json(self) -> dict[str, object]:
        return {"mean": self.mean, "min": self.min, "max": self.max, "n_models": self.n_models}


@dataclass(frozen=True)
class Transfer:
    """One (attack, threat)'s transfer for an architecture: onto it (means over cells),
    and, member threat, the study's per-model means as source and as target."""

    onto_architecture: GroupFigure
    as_source: GroupFigure | None = None
    as_target: GroupFigure | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"onto_architecture": self.onto_architecture.to_json()}
        if self.as_source is not None:
            out["as_source"] = self.as_source.to_json()
        if self.as_target is not None:
            out["as_target"] = self.as_target.to_json()
        return out


@dataclass(frozen=True)
class ArchSummary:
    """One architecture of a variant: global model and locals apart, and its pooled
    baseline's own figures when the store holds one (federation.pooled_baseline)."""

    clean_auc_global: Estimate | None  # None: no global model of this architecture
    clean_auc_locals: LocalAucs
    robust_accuracy_global: Estimate
    robust_counts_global: Counts
    robust_accuracy_locals: Estimate
    transfer: Mapping[str, Transfer]  # "attack/threat" -> its figures
    clean_auc_pooled: Estimate | None = None  # None: no pooled model of this architecture
    robust_accuracy_pooled: Estimate | None = None
    transfer_pooled: Mapping[str, Transfer] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        pooled: dict[str, object] = {}
        if self.clean_auc_pooled is not None or self.transfer_pooled:
            pooled = {
                "clean_auc_pooled": None
                if self.clean_auc_pooled is None
                else self.clean_auc_pooled.to_json(),
                "robust_accuracy_pooled": (
                    None if self.robust_accuracy_pooled is None else self.robust_accuracy_pooled.to_json()
                ),
                "transfer_pooled": {k: t.to_json() for k, t in self.transfer_pooled.items()},
            }
        return {
            "clean_auc_global": None if self.clean_auc_global is None else self.clean_auc_global.to_json(),
            "clean_auc_locals": self.clean_auc_locals.to_json(),
            "robust_accuracy_global": self.robust_accuracy_global.to_json(),
            "robust_counts_global": self.robust_counts_global.to_json(),
            "robust_accuracy_locals": self.robust_accuracy_locals.to_json(),
            "transfer": {k: t.to_json() for k, t in self.transfer.items()},
            **pooled,
        }


@dataclass(frozen=True)
class ModelSummary:
    """One model's point on the clean-AUC-against-robustness plot."""

    arch: str
    kind: str
    clean_auc: float | None
    robust_accuracy: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "kind": self.kind,
            "clean_auc": self.clean_auc,
            "robust_accuracy": self.robust_accuracy,
        }


@dataclass(frozen=True)
class VariantSummary:
    """One variant's figures, as study.json holds them."""

    architectures: Mapping[str, ArchSummary]
    global_vs_local: Mapping[str, GlobalVsLocal]  # "attack/threat" -> global vs local targets
    models: Mapping[str, ModelSummary]
    eps: float
    # "attack/threat" -> transfer onto every federation model a source does not hold (the
    # mean over its transfer cells, two-way cluster bootstrap): attack.reports.diversity
    reach: Mapping[str, GroupFigure] = field(default_factory=dict)
    # site -> the architectures it trains (its local models'), in name order
    site_architectures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "architectures": {a: r.to_json() for a, r in self.architectures.items()},
            "global_vs_local": {k: g.to_json() for k, g in self.global_vs_local.items()},
            "models": {n: m.to_json() for n, m in self.models.items()},
            "eps": self.eps,
            "reach": {k: g.to_json() for k, g in self.reach.items()},
            "site_architectures": {s: list(a) for s, a in self.site_architectures.items()},
        }


# Each variant's summary, or, for a variant that failed, why.
Variants = Mapping[str, VariantSummary | str]


@dataclass(frozen=True)
class StudyMeta:
    """What the study measured (study.json's head)."""

    seed: int
    eps: float
    attacks: tuple[str, ...]
    threats: tuple[str, ...]
    robust_attack: str
    # each variant's config overrides as the study config gives them (dotted key -> any
    # YAML value): free-form, echoed into study.json as they are
    overrides: Mapping[str, Mapping[str, Any]]

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "eps": self.eps,
            "attacks": list(self.attacks),
            "threats": list(self.threats),
            "robust_attack": self.robust_attack,
            "overrides": {n: dict(o) for n, o in self.overrides.items()},
        }


def study_json(meta: StudyMeta, variants: Variants) -> dict[str, object]:
    """study.json's body (the overrides may hold values JSON lacks: dumped with default=str)."""
    return {
        **meta.to_json(),
        "variants": {n: v if isinstance(v, str) else v.to_json() for n, v in variants.items()},
    }
