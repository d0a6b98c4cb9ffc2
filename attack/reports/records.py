"""The typed records the report writers consume: a run's metadata (the attack's, the
suite's), a model as results.json lists it, and the suite's row per (attack, threat, eps).
Each has its one JSON form (to_json), built in the order results.json holds its keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attack.measure.core import Cell, Measurement
from attack.reports.figures import CleanFigures
from attack.reports.provenance import Provenance
from attack.reports.tables import Group
from attack.stats import PairedTest


@dataclass(frozen=True)
class Skipped:
    """A model of the store left out (--skip-bad), and why."""

    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class RunMeta:
    """What `fedattack attack` measured, on what, with what (results.json's head)."""

    attack: str
    eps: float
    threat: str
    seed: int
    store: str
    n_images: int
    n_images_by_set: str  # "N from <test set>, ..."
    image_size: int
    skipped: tuple[Skipped, ...]
    provenance: Provenance

    def to_json(self) -> dict[str, object]:
        return {
            "attack": self.attack,
            "eps": self.eps,
            "threat": self.threat,
            "seed": self.seed,
            "store": self.store,
            "n_images": self.n_images,
            "n_images_by_set": self.n_images_by_set,
            "image_size": self.image_size,
            "skipped": [s.to_json() for s in self.skipped],
            "provenance": self.provenance.to_json(),
        }


@dataclass(frozen=True)
class Ensemble:
    """How the suite's ensembles craft (attack.suite.ensemble), and, `scaled`, each
    ensemble's fitted member logit scales (source -> member -> scale)."""

    mode: str
    scales: Mapping[str, Mapping[str, float]]

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "scales": {s: dict(m) for s, m in self.scales.items()}}


@dataclass(frozen=True)
class SuiteMeta:
    """What every (attack, threat, eps) of the suite shares (each results.json's head)."""

    seed: int
    n_images: int
    provenance: Provenance
    ensemble: Ensemble

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "n_images": self.n_images,
            "provenance": self.provenance.to_json(),
            "ensemble": self.ensemble.to_json(),
        }


@dataclass(frozen=True)
class SuiteRow:
    """One (attack, threat, eps) of the suite: the measurement and what suite.md and
    sweep.json show of it."""

    threat: str
    eps: float
    m: Measurement
    groups: Mapping[str, Group]  # attack.reports.tables.by_target_group
    over_control: PairedTest  # the attack against random-sign noise
    folder: str  # its results.json's folder, relative to the suite's

    @property
    def white_box(self) -> list[Cell]:
        """The cells whose target is one of the surrogates (with images)."""
        return [c for c in self.m.cells if c.white_box and c.n_correct_before > 0]

    @property
    def empty(self) -> list[str]:
        """The sources that classified none of the attack images correctly."""
        return [x for x in self.m.sources if not self.m.attacked[x]]


@dataclass(frozen=True)
class ModelResult:
    """A model as the attack's results.json lists it."""

    name: str
    arch: str
    kind: str
    site: str | None
    sha256: str
    clean_test: CleanFigures
    clean_correct_on_attack_set: int

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "arch": self.arch,
            "kind": self.kind,
            "site": self.site,
            "sha256": self.sha256,
            "clean_test": self.clean_test.to_json(),
            "clean_correct_on_attack_set": self.clean_correct_on_attack_set,
        }
