"""`fedattack attack --suite`: every attack under every threat model at the study's eps,
and eps sweeps, all measured by the same code as the study (attack.measure.transfer) and reported
with the same statistics (attack.reports.tables). One folder per (attack, threat) with
results.json, matrix.csv and heatmap.png; suite.md compares them side by side; sweep.png
and sweep.json hold the transfer curves."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from attack.measure.core import (
    Measurement,
    Probe,
    Settings,
    Source,
    SuiteRequest,
    Target,
    fit_mask,
    on_device,
)
from attack.measure.outsider import train_outsiders
from attack.measure.threats import insider_sources, member_sources, outsider_sources
from attack.measure.transfer import measure
from attack.methods.registry import build_attack
from attack.reports.heatmap import heatmap_png
from attack.reports.results import measurement_json
from attack.reports.study import matrix_csv, md_safe
from attack.reports.suite import suite_md, sweep_png
from attack.reports.tables import Info, by_target_group, over_control
from attack.stats import PairedTest
from shared.config.experiment import ExperimentConfig
from shared.io import atomic_write

log = logging.getLogger(__name__)


def sources_for(
    cfg: ExperimentConfig,
    threats: tuple[str, ...],
    targets: list[Target],
    outsider_dir: Path,
    info: dict[str, Info],
) -> dict[str, list[Source]]:
    mode = cfg.attack.suite.ensemble
    sources: dict[str, list[Source]] = {}
    for threat in threats:
        if threat == "member":
            sources[threat] = member_sources(targets)
        elif threat == "insider":
            sources[threat] = insider_sources(targets, mode)
        else:  # outsider: its own surrogates, trained on the public split; no store file
            surrogates = train_outsiders(cfg, outsider_dir, cfg.federation.architectures)
            sources[threat] = outsider_sources(surrogates, mode)
        for src in sources[threat]:
            info.setdefault(src.name, Info(src.name, src.arch, src.kind))
    return sources


def _fit_scales(sources: dict[str, list[Source]], probe: Probe, s: Settings) -> dict[str, dict[str, float]]:
    """`ensemble: scaled`: each ensemble's per-member logit scales (source -> member ->
    scale, for results.json), fitted once on the universal attacks' fit part of the attack
    images, so that no statistic of the held-out part (on which universal perturbations
    are measured) enters any attack."""
    fitted: dict[str, dict[str, float]] = {}
    images = probe.data.images[fit_mask(probe.data.ids, s.fit_fraction, s.seed)]
    for threat_sources in sources.values():
        for src in threat_sources:
            if src.surrogate.needs_scales:
                on_device(src.surrogate, s.device)  # moves it in place
                scales = src.surrogate.fit_scales(images, s.batch, s.device)
                fitted[src.name] = dict(zip(src.members, scales, strict=True))
                log.info("%s: member logit scales %s", src.name, ", ".join(f"{v:.3g}" for v in scales))
    return fitted


def _write(
    folder: Path,
    m: Measurement,
    info: dict[str, Info],
    threat: str,
    meta: dict[str, Any],
    seed: int,
    versus: PairedTest,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {**meta, "threat": threat, **measurement_json(m, info, seed), "over_control": versus.to_json()}
    atomic_write(folder / "results.json", json.dumps(body, indent=1))
    atomic_write(folder / "matrix.csv", matrix_csv(m))
    heatmap_png(m, folder / "heatmap.png", f"{m.attack} (eps {m.eps}), {threat} threat")


def run_suite(
    cfg: ExperimentConfig,
    req: SuiteRequest,
    probe: Probe,
    targets: list[Target],
    info: dict[str, Info],
    s: Settings,
    out: Path,
    provenance: dict[str, Any],
    progress: bool = True,
) -> Path:
    """Measure every (attack, threat) at the study's eps and the sweeps; write the reports."""
    started = time.monotonic()
    info = dict(info)
    sources = sources_for(cfg, req.threats, targets, req.outsider_dir or out / "outsider", info)
    meta = {
        "seed": cfg.seed,
        "n_images": len(probe.data),
        "provenance": provenance,
        "ensemble": {"mode": cfg.attack.suite.ensemble, "scales": _fit_scales(sources, probe, s)},
    }
    rows: dict[tuple[str, str, float], dict[str, Any]] = {}
    runs = [(a, t, cfg.attack.eps) for a in req.attacks for t in req.threats]
    runs += [
        (a, t, e)
        for a in req.sweep_attacks
        for e in req.sweep_eps
        for t in req.threats
        if (a, t, e) not in runs
    ]
    for i, (name, threat, eps) in enumerate(runs, 1):
        print(
            f"[suite {i}/{len(runs)}] {name} eps {eps}, {threat} threat ({len(sources[threat])} sources)",
            flush=True,
        )
        attack = build_attack(name, eps, cfg.attack)
        m = measure(sources[threat], attack, probe, s, progress)
        folder = (
            out / f"{name}-{threat}"
            if eps == cfg.attack.eps
            else out / "sweep" / f"{name}-{threat}-eps{eps:g}"
        )
        versus = over_control(m, cfg.seed)
        _write(folder, m, info, threat, {**meta, "eps": eps}, cfg.seed, versus)
        rows[name, threat, eps] = {
            "groups": by_target_group(m, info, cfg.seed),
            "over_control": versus,
            "white_box": [c for c in m.cells if c.white_box and c.n_correct_before > 0],
            "sources": len(m.sources),
            "empty": [md_safe(x) for x in m.sources if not m.attacked[x]],
            "folder": folder.relative_to(out).as_posix(),
        }
    atomic_write(out / "suite.md", suite_md(rows, req, cfg.attack.eps, meta))
    sweep_png(rows, req, out / "sweep.png", out / "sweep.json")
    print(
        f"suite: {len(runs)} measurements in {time.monotonic() - started:.0f}s; report {out / 'suite.md'}",
        flush=True,
    )
    return out / "suite.md"
