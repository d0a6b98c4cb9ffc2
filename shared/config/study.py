"""`fedattack study`: the variants of one federation to train and compare (each the same
config with a few keys changed), and the attacks and threat models that measure them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
STUDY_THREATS = ("member", "insider", "outsider")
FIXED = ("output_dir", "seed", "split_seed", "study")  # and every data.* / synth.* key


@dataclass(frozen=True)
class Variant:
    """One federation of the study: the experiment config with `overrides` (dotted key ->
    value, e.g. `federation.strategy: fedbn`) applied; its files go to
    output_dir/variants/<name>."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not VARIANT_NAME.match(self.name):
            raise ValueError(
                f"variants: name {self.name!r} must be 1-40 letters, digits, '-' or '_' (it names a folder)"
            )
        for key in self.overrides:
            if key in FIXED or key.split(".")[0] in ("data", "synth"):
                raise ValueError(
                    f"variants: {self.name}: {key!r} may not differ between variants (same data, "
                    "splits and seed for all); set it at the top of the config"
                )


@dataclass(frozen=True)
class StudyConfig:
    """The variants, and what measures each: every (attack, threat) at attack.eps, on the
    same held-out test images; `robust_attack` (member threat) gives white-box robust
    accuracy. `seeds` (or `fedattack study --seeds`): one independent federation per seed
    and variant, all on the split of the config's seed, reported as means over seeds."""

    variants: tuple[Variant, ...]
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    threats: tuple[str, ...] = ("member", "outsider")
    robust_attack: str = "pgd"
    seeds: tuple[int, ...] = ()  # empty: the config's seed alone

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants: give at least one (e.g. - name: baseline)")
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variants: duplicate name {dupes[0]!r}; every variant needs its own name")
        unknown = sorted(set(self.threats) - set(STUDY_THREATS))
        if unknown:
            raise ValueError(f"threats: unknown threat model {unknown[0]!r}; known: {list(STUDY_THREATS)}")
        if "member" not in self.threats:
            raise ValueError("threats: must include member (white-box robustness and transfer as source)")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(
                f"seeds: {repeated[0]} is given twice in {list(self.seeds)}; "
                "every replicate needs its own seed"
            )
        if self.robust_attack not in self.attacks:
            raise ValueError(
                f"robust_attack: {self.robust_attack!r} must be one of attacks {list(self.attacks)}"
            )
