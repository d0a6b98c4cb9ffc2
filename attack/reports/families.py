"""Transfer across architecture families: CNN -> transformer, transformer -> CNN and the
within-family pairs, as means over cells with a two-way cluster bootstrap interval (the
cell-level view's unit), for a measurement whose models include a vision transformer.
Ensemble and surrogate sources count by their recorded architecture; "ensemble" is left out,
and so are the pooled baseline's cells (attack.reports.tables.federated)."""

from __future__ import annotations

from attack.measure.core import Measurement
from attack.reports.tables import Group, Info, Pick, cell_group, cells_where, federated
from shared.config.training import arch_family

FAMILIES = ("CNN", "transformer")


def family_pairs(m: Measurement, info: dict[str, Info], seed: int) -> dict[tuple[str, str], Group]:
    """(source family, target family) -> the mean transfer over the usable cells of that pair."""

    def family(name: str) -> str | None:
        arch = info[name].arch
        return None if arch == "ensemble" else arch_family(arch)

    fed = federated(info)

    def pair(src: str, dst: str) -> Pick:
        return lambda c: family(c.source) == src and family(c.target) == dst and fed(c)

    return {(s, t): cell_group(cells_where(m, pair(s, t)), seed) for s in FAMILIES for t in FAMILIES}


def families_md(m: Measurement, info: dict[str, Info], seed: int) -> list[str]:
    """The report's section on families; nothing when every model is a CNN (the study's)."""
    if not any(arch_family(info[n].arch) == "transformer" for n in m.targets if info[n].arch != "ensemble"):
        return []
    lines = [
        "",
        "### Across architecture families",
        "",
        "Each usable cell counts once, grouped by the families of its source and target "
        "(transformer: ViT, DeiT, Swin and the like; CNN: every other network, ConvNeXt included); "
        "the interval is the cell-level view's two-way cluster bootstrap.",
        "",
        "| source -> target | transfer (mean over cells) |",
        "|---|---|",
    ]
    for (src, dst), g in family_pairs(m, info, seed).items():
        within = " (within family)" if src == dst else ""
        lines.append(f"| {src} -> {dst}{within} | {g.text()} |")
    return lines
