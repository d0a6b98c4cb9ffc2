"""Threat models: which models the attacker may craft on.

- member (the study's): each federation model attacks on its own; every model is a target.
- insider: a site crafts on an ensemble of its own local models (every architecture)
  plus the global models it received; its targets are the other sites' local models
  (transfer) and the globals (which are in its ensemble: white-box, reported apart).
- outsider: no federation weights at all. The attacker trains its own surrogates, one
  per architecture, on the public split (data no site holds: attack.outsider) and crafts
  on each of them and on their ensemble; every federation model is a target.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from attack.measure.core import Source, Target
from attack.methods.surrogate import EnsembleMode, Surrogate
from shared.config.attack import THREATS
from shared.errors import AttackError


def check_threat_names(names: Sequence[str]) -> None:
    for name in names:
        if name not in THREATS:
            raise AttackError(f"unknown threat model {name!r}; known: {', '.join(THREATS)}")


def member_sources(targets: list[Target]) -> list[Source]:
    return [Source(t.name, t.arch, t.kind, (t.name,), Surrogate([t.model])) for t in targets]


def insider_sources(targets: list[Target], mode: EnsembleMode) -> list[Source]:
    """One ensemble per site: its own locals and the globals it received, those of the
    architectures it trains (every global under FedAvg; under FedDF, where a site trains
    one architecture, only that architecture's)."""
    globals_ = [t for t in targets if t.kind == "global"]
    sources = []
    for site in sorted({t.site for t in targets if t.kind == "local" and t.site}):
        locals_ = [t for t in targets if t.kind == "local" and t.site == site]
        archs = {t.arch for t in locals_}
        own = locals_ + [g for g in globals_ if g.arch in archs]
        sources.append(
            Source(
                f"insider-{site}",
                "ensemble",
                "insider",
                tuple(t.name for t in own),
                Surrogate([t.model for t in own], mode),
            )
        )
    return sources


def outsider_sources(surrogates: dict[str, nn.Module], mode: EnsembleMode) -> list[Source]:
    """One source per outsider surrogate (by architecture) and one for their ensemble."""
    names = {arch: f"outsider-{arch}" for arch in surrogates}
    sources = [
        Source(names[arch], arch, "outsider", (names[arch],), Surrogate([model]))
        for arch, model in surrogates.items()
    ]
    if len(surrogates) > 1:
        sources.append(
            Source(
                "outsider-ensemble",
                "ensemble",
                "outsider",
                tuple(names.values()),
                Surrogate(list(surrogates.values()), mode),
            )
        )
    return sources
