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
from attack.measure.shards import attack_devices
from attack.measure.threats import check_threat_names, insider_sources, member_sources, outsider_sources
from attack.measure.transfer import measure
from attack.methods.registry import build_attack, check_attack_names, parse_attack_name
from attack.reports.heatmap import heatmap_png
from attack.reports.provenance import Provenance
from attack.reports.records import Ensemble, SuiteMeta, SuiteRow
from attack.reports.results import suite_json
from attack.reports.study import matrix_csv
from attack.reports.suite import suite_md, sweep_png
from attack.reports.tables import Info, by_target_group, over_control
from shared.config.experiment import ExperimentConfig
from shared.data.manifest import public_manifest_path
from shared.errors import AttackError
from shared.io import atomic_write

log = logging.getLogger(__name__)
_NO_PUBLIC = (
    "the outsider threat trains its surrogates on the public split: set data.split.public_fraction "
    "(e.g. 0.15) and re-split, or leave 'outsider' out (attack.suite.threats, or --threat member,insider)"
)


def check_suite(cfg: ExperimentConfig, req: SuiteRequest) -> None:
    """Every suite setting that needs no data, before any folder is made or compute spent:
    the attack and threat names, something to measure, the outsider's public split in the
    config, the devices (attack.devices)."""
    check_attack_names(req.attacks + req.sweep_attacks)
    attack_devices(cfg.attack)
    check_threat_names(req.threats)
    if not req.threats:
        raise AttackError("the suite has no threat model (attack.suite.threats, --threat): name at least one")
    if not req.attacks and not (req.sweep_attacks and req.sweep_eps):
        raise AttackError(
            "the suite has nothing to measure: attack.suite.attacks (--attack) is empty and so is the "
            "eps sweep (attack.suite.sweep_attacks x sweep_eps, --eps)"
        )
    if "outsider" in req.threats and cfg.data.split.public_fraction == 0:
        raise AttackError(f"data.split.public_fraction is 0: {_NO_PUBLIC}")
    kernel, side = cfg.attack.iterative.kernel_size, cfg.data.image_size
    if kernel > side and any(parse_attack_name(a)[0] == "tifgsm" for a in req.attacks + req.sweep_attacks):
        raise AttackError(
            f"attack.iterative.kernel_size {kernel} is larger than the images (data.image_size {side}): "
            f"TI-FGSM's kernel must fit; use an odd size up to {side - 1 + side % 2}"
        )


def check_suite_data(cfg: ExperimentConfig, req: SuiteRequest) -> None:
    """Once the splits exist (before any model is loaded): the public split's files."""
    if "outsider" not in req.threats:
        return
    for name in cfg.data.datasets:
        path = public_manifest_path(cfg.splits_dir, name)
        if not path.is_file():
            raise AttackError(f"{path}: no public split; {_NO_PUBLIC}")


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


def _write(folder: Path, row: SuiteRow, meta: SuiteMeta, info: dict[str, Info], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "results.json", json.dumps(suite_json(meta, row, info, seed), indent=1))
    atomic_write(folder / "matrix.csv", matrix_csv(row.m))
    heatmap_png(row.m, folder / "heatmap.png", f"{row.m.attack} (eps {row.m.eps}), {row.threat} threat")


def run_suite(
    cfg: ExperimentConfig,
    req: SuiteRequest,
    probe: Probe,
    targets: list[Target],
    info: dict[str, Info],
    s: Settings,
    out: Path,
    provenance: Provenance,
    progress: bool = True,
    main: Measurement | None = None,
) -> Path:
    """Measure every (attack, threat) at the study's eps and the sweeps; write the reports.
    `main`: the job's own measurement (attack.name at attack.eps from the member sources,
    on the same probe): the suite's identical measurement reuses it (every draw is seeded
    by the attack, eps, source and image, so measuring it again gives the same counts)."""
    started = time.monotonic()
    info = dict(info)
    sources = sources_for(cfg, req.threats, targets, req.outsider_dir or out / "outsider", info)
    ensemble = Ensemble(cfg.attack.suite.ensemble, _fit_scales(sources, probe, s))
    meta = SuiteMeta(cfg.seed, len(probe.data), provenance, ensemble)
    rows: dict[tuple[str, str, float], SuiteRow] = {}
    runs: list[tuple[str, str, float]] = [(a, t, cfg.attack.eps) for a in req.attacks for t in req.threats]
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
        same = (name, threat, eps) == (cfg.attack.name, "member", cfg.attack.eps)
        if main is not None and same and main.sources == [src.name for src in sources[threat]]:
            print("  the job's own measurement above: reused, not measured again", flush=True)
            m = main
        else:
            m = measure(sources[threat], build_attack(name, eps, cfg.attack), probe, s, progress)
        folder = (
            out / f"{name}-{threat}"
            if eps == cfg.attack.eps
            else out / "sweep" / f"{name}-{threat}-eps{eps:g}"
        )
        row = SuiteRow(
            threat,
            eps,
            m,
            groups=by_target_group(m, info, cfg.seed),
            over_control=over_control(m, cfg.seed, info),
            folder=folder.relative_to(out).as_posix(),
        )
        _write(folder, row, meta, info, cfg.seed)
        rows[name, threat, eps] = row
    atomic_write(out / "suite.md", suite_md(rows, req, cfg.attack.eps, meta))
    sweep_png(rows, req, out / "sweep.png", out / "sweep.json")
    print(
        f"suite: {len(runs)} measurements in {time.monotonic() - started:.0f}s; report {out / 'suite.md'}",
        flush=True,
    )
    return out / "suite.md"
