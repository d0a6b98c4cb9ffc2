"""Patient-level, label-stratified split of each dataset into per-site shards, a test set
and, optionally, a public split.

Each site gets one manifest file (its train and val parts) so that a site's client needs
only that file and its own data root. Each dataset gets a test manifest that no site
trains on (the attack set) and, with data.split.public_fraction, a public manifest that
no site and no test set holds (the outsider's training data). Radiographs shared between
datasets are kept out of the test and public sets (shared.prep.leakage); the split writes
that report (overlap.json) and its fingerprint (fingerprint.json) beside the manifests.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from shared.config.data import DataConfig, PartitionConfig, SplitConfig
from shared.data.fingerprint import MANIFEST_PREFIXES, write_fingerprint
from shared.data.manifest import (
    Manifest,
    public_manifest_path,
    site_manifest_path,
    test_manifest_path,
)
from shared.data.records import Sample
from shared.errors import SplitError
from shared.prep.leakage import (
    HELD_OUT,
    find_links,
    keep_twins_apart,
    linked_groups,
    patients_of,
    pin_groups,
    summary,
    write_report,
)
from shared.prep.sources import read_source

log = logging.getLogger(__name__)


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def split_patients(
    samples: tuple[Sample, ...],
    sites: tuple[str, ...],
    cfg: SplitConfig,
    seed: int,
    name: str,
    pinned: dict[str, str] | None = None,
    partition: PartitionConfig | None = None,
) -> dict[str, dict[str, list[Sample]]]:
    """Assign whole patients to test, public (train/val) or a site's train/val, stratified by
    patient label. `pinned` patients ("test", "public" or "site") go where they are pinned and
    free ones fill the rest of each quota; without pins and a public fraction the split is
    the one it always was. `partition` deals each stratum's remaining patients to the sites
    (iid, the default: round robin)."""
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient_id].append(s)
    rng = _rng(seed, name)
    strata: dict[int, list[str]] = {0: [], 1: []}
    for pid in sorted(by_patient):
        strata[max(s.label for s in by_patient[pid])].append(pid)
    for label in strata:
        strata[label] = [strata[label][i] for i in rng.permutation(len(strata[label]))]
    if cfg.max_patients is not None:
        total = sum(len(v) for v in strata.values())
        if total > cfg.max_patients:
            for label in strata:
                keep = max(1, round(len(strata[label]) * cfg.max_patients / total))
                strata[label] = strata[label][:keep]
    out: dict[str, dict[str, list[Sample]]] = {"test": {"test": []}}
    groups = [*(["public"] if cfg.public_fraction > 0 else []), *sites]
    out.update({g: {"train": [], "val": []} for g in groups})
    shares = _shares(partition or PartitionConfig(), len(sites), _rng(seed, f"{name}:partition"))
    for label, pids in strata.items():
        test, public, rest = _held_out(pids, pinned or {}, cfg)
        for pid in test:
            out["test"]["test"].extend(by_patient[pid])
        chunks = {"public": public} if public else {}
        chunks.update(zip(sites, _deal(rest, len(sites), shares[label]), strict=True))
        for group, chunk in chunks.items():
            n_val = round(len(chunk) * cfg.val_fraction)
            for j, pid in enumerate(chunk):
                out[group]["val" if j < n_val else "train"].extend(by_patient[pid])
    return out


def _shares(
    partition: PartitionConfig, n_sites: int, rng: np.random.Generator
) -> dict[int, np.ndarray | None]:
    """Each label stratum's site shares: None (iid's round robin), one Dirichlet(alpha) draw
    for both strata (quantity) or one per stratum (label). Drawn from the partition's own
    stream, so the iid split's draws are untouched."""
    if partition.kind == "iid":
        return {0: None, 1: None}
    alpha = np.full(n_sites, partition.alpha)
    if partition.kind == "quantity":
        shared = rng.dirichlet(alpha)
        return {0: shared, 1: shared}
    return {label: rng.dirichlet(alpha) for label in (0, 1)}


def _deal(pids: list[str], n_sites: int, shares: np.ndarray | None) -> list[list[str]]:
    """Split `pids` (already shuffled) into one chunk per site: round robin, or contiguous
    chunks sized by `shares` (largest remainders get the leftover patients)."""
    if shares is None:
        return [pids[i::n_sites] for i in range(n_sites)]
    exact = shares * len(pids)
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: len(pids) - int(counts.sum())]:
        counts[i] += 1
    edges = np.concatenate([[0], np.cumsum(counts)])
    return [pids[edges[i] : edges[i + 1]] for i in range(n_sites)]


def _held_out(pids: list[str], pinned: dict[str, str], cfg: SplitConfig) -> tuple[list[str], ...]:
    """(test, public, rest) of one stratum, in its order: the patients pinned to a side, then
    free ones up to the side's quota."""
    sides: dict[str, list[str]] = {side: [p for p in pids if pinned.get(p) == side] for side in HELD_OUT}
    free = [p for p in pids if p not in pinned]
    for side, fraction in (("test", cfg.test_fraction), ("public", cfg.public_fraction)):
        k = max(0, round(len(pids) * fraction) - len(sides[side]))
        taken = set(sides[side]) | set(free[:k])
        sides[side], free = [p for p in pids if p in taken], free[k:]
    held = set(sides["test"]) | set(sides["public"])
    return sides["test"], sides["public"], [p for p in pids if p not in held]


def balance(part: list[Sample], positive_fraction: float, rng: np.random.Generator) -> list[Sample]:
    """Undersample negatives so positives make up `positive_fraction` of the part."""
    pos = [s for s in part if s.label == 1]
    neg = [s for s in part if s.label == 0]
    if not pos or len(pos) / len(part) >= positive_fraction:
        return part
    n_neg = round(len(pos) * (1 - positive_fraction) / positive_fraction)
    keep = sorted(rng.choice(len(neg), size=n_neg, replace=False).tolist())
    return sorted(pos + [neg[i] for i in keep], key=lambda s: s.image_id)


def _check_nonempty(
    shard: str, dataset: str, parts: dict[str, list[Sample]], partition: PartitionConfig | None = None
) -> None:
    for part, samples in parts.items():
        labels = {s.label for s in samples}
        if labels != {0, 1}:
            what = "is empty" if not samples else f"has only label {labels.pop()}"
            if partition is not None and partition.kind != "iid":
                raise SplitError(
                    f"{shard} ({dataset}) part {part!r} {what} after the {partition.kind}-skewed partition "
                    f"with alpha {partition.alpha:g}; raise data.datasets.{dataset}.partition.alpha, "
                    "give the dataset fewer sites or change the seed"
                )
            raise SplitError(
                f"{shard} ({dataset}) part {part!r} {what} after the split; add patients, lower "
                "data.split.max_patients' cap, give the dataset fewer sites or change data.split's fractions"
            )


def _manifest_of(group: str, dataset: str, out_dir: Path) -> tuple[str, Path]:
    if group == "test":
        return f"test_{dataset}", test_manifest_path(out_dir, dataset)
    if group == "public":
        return f"public_{dataset}", public_manifest_path(out_dir, dataset)
    return f"site_{group}", site_manifest_path(out_dir, group)


def make_splits(data: DataConfig, seed: int, out_dir: Path) -> dict[str, Path]:
    """Read every dataset, split it, keep cross-dataset twins out of the held-out sets, write
    the site, test and public manifests, overlap.json and fingerprint.json; return the
    manifests' paths."""
    indices = {n: read_source(ds, data.skip_unreadable) for n, ds in data.datasets.items()}
    for name, index in indices.items():
        if not index.samples:
            raise SplitError(f"dataset {name} at {index.root}: no usable images")
    links, info = find_links(data, indices, out_dir)
    linked = linked_groups(patients_of(indices, links), links)
    pins = pin_groups(linked, data.split, seed)
    placed: dict[str, dict[str, dict[str, list[Sample]]]] = {}
    for name, ds in data.datasets.items():
        groups = split_patients(
            indices[name].samples,
            ds.sites,
            data.split,
            seed,
            name,
            {**indices[name].pinned, **pins[name]},
            ds.partition,
        )
        placed[name] = groups
        rng = _rng(seed, f"{name}:balance")
        for site in ds.sites:
            if (fraction := data.split.balance_positive_fraction) is not None:
                groups[site]["train"] = balance(groups[site]["train"], fraction, rng)
            _check_nonempty(f"site {site}", name, groups[site], ds.partition)
    pinned = Counter(pins[ds][p] for ds, p in map(min, linked))
    report = {**info, "pinned": dict(sorted(pinned.items())), **keep_twins_apart(placed, indices, links)}
    for name, groups in placed.items():  # every held-out set keeps both labels, or nothing is written
        for group in HELD_OUT:
            if group in groups:
                _check_nonempty(f"{group} set", name, groups[group])
    written: dict[str, Path] = {}
    for name, ds in data.datasets.items():
        index = indices[name]
        for group, parts in placed[name].items():
            mname, path = _manifest_of(group, name, out_dir)
            dealt = ds.partition.describe() if group in ds.sites and ds.partition.kind != "iid" else ""
            Manifest(
                mname, name, ds.kind, ds.root, {k: tuple(v) for k, v in parts.items()}, index.missing, dealt
            ).save(path)
            written[mname] = path
        log.info("split %s: %d images, %d skipped", name, len(index.samples), len(index.missing))
    for stale in Path(out_dir).glob("*.json"):  # manifests of an earlier split (other sites, no public)
        if stale.stem.startswith(MANIFEST_PREFIXES) and stale.stem not in written:
            stale.unlink()
            log.info("removed %s: not part of this split", stale)
    write_report(out_dir, report)
    write_fingerprint(out_dir)
    log.info("%s (details: %s)", summary(report), Path(out_dir) / "overlap.json")
    return written
