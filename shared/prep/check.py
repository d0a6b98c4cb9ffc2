"""`fedattack data check`: split, decode every image once (filling the cache), report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config.experiment import ExperimentConfig
from shared.data.cache import load_cached
from shared.data.manifest import load_manifest
from shared.prep.leakage import OVERLAP_FILE, read_report, summary
from shared.prep.splits import make_splits


@dataclass(frozen=True)
class PartReport:
    manifest: str
    part: str
    patients: int
    images: int
    positives: int
    unreadable: int
    absent: int  # listed in the dataset's CSV but not on disk (whole dataset)
    unreadable_list: Path
    dataset: str = ""
    partition: str = ""  # the manifest's partition ("" for iid, test and public sets)


def check_data(cfg: ExperimentConfig) -> list[PartReport]:
    """Validate every dataset: write the splits, decode each part, count what is unreadable."""
    paths = make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir)
    reports = []
    for _, path in sorted(paths.items()):
        m = load_manifest(path)
        for part, samples in m.parts.items():
            cached = load_cached(
                m,
                part,
                cfg.data.image_size,
                cfg.cache_dir,
                cfg.data.workers,
                skip_unreadable=True,
                max_pixels=cfg.data.max_pixels,
            )
            kept = set(cached.ids)
            reports.append(
                PartReport(
                    m.name,
                    part,
                    patients=len({s.patient_id for s in samples if s.image_id in kept}),
                    images=len(cached),
                    positives=int(cached.labels.sum()),
                    unreadable=len(cached.unreadable),
                    absent=len(m.skipped),
                    unreadable_list=cached.folder / "unreadable.txt",
                    dataset=m.dataset,
                    partition=m.partition,
                )
            )
    return reports


def format_reports(reports: list[PartReport]) -> str:
    """A fixed-width table, one row per site/test part."""
    head = (
        f"{'shard':<12}{'part':<7}{'patients':>9}{'images':>8}{'positives':>10}"
        f"{'unreadable':>11}{'absent*':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(
            f"{r.manifest:<12}{r.part:<7}{r.patients:>9}{r.images:>8}"
            f"{r.positives:>10}{r.unreadable:>11}{r.absent:>9}"
        )
    lines.append("* listed in the dataset's CSV but absent on disk (per dataset, skipped)")
    lines.extend(format_sites(reports))
    return "\n".join(lines)


def format_sites(reports: list[PartReport]) -> list[str]:
    """One line per site: its dataset, partition, size and positive rate (train and val)."""
    sites: dict[str, list[PartReport]] = {}
    for r in reports:
        if r.manifest.startswith("site_"):
            sites.setdefault(r.manifest.removeprefix("site_"), []).append(r)
    lines = ["sites (train + val):"]
    for site, parts in sites.items():
        images, positives = sum(r.images for r in parts), sum(r.positives for r in parts)
        rate = f"{positives / images:.1%}" if images else "-"
        how = parts[0].partition or "iid"
        lines.append(f"  {site}: {images} images, {rate} positive ({parts[0].dataset}, {how})")
    return lines


def format_overlap(cfg: ExperimentConfig) -> str:
    """The split's overlap report (radiographs shared between datasets) in a few lines."""
    report = read_report(cfg.splits_dir)
    if report is None:
        return f"no overlap report in {cfg.splits_dir}; run `fedattack data split` first"
    return f"{summary(report)}\n  details: {cfg.splits_dir / OVERLAP_FILE}"
