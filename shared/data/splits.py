"""Patient-level, label-stratified split of each dataset into per-site shards and a test set.

Each site gets one manifest file (its train and val parts) so that a site's client needs
only that file and its own data root. Each dataset gets a test manifest that no site
trains on: the attack set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import DataConfig, SplitConfig
from shared.data.records import DatasetIndex, Sample
from shared.data.sources import read_dataset
from shared.errors import DatasetError, SplitError
from shared.io import atomic_write

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """A site shard (parts train/val) or a test set (part test), with its data root."""

    name: str  # "site_A" or "test_nih"
    dataset: str
    kind: str
    data_root: Path
    parts: dict[str, tuple[Sample, ...]]
    skipped: tuple[str, ...] = ()

    def part(self, name: str) -> tuple[Sample, ...]:
        try:
            return self.parts[name]
        except KeyError:
            raise DatasetError(
                f"manifest {self.name}: no part {name!r}; has {sorted(self.parts)}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "dataset": self.dataset,
            "kind": self.kind,
            "data_root": str(self.data_root),
            "parts": {k: [s.to_row() for s in v] for k, v in self.parts.items()},
            "skipped": list(self.skipped),
            "counts": {
                k: {"images": len(v), "positives": sum(s.label for s in v),
                    "patients": len({s.patient_id for s in v})}
                for k, v in self.parts.items()
            },
        }

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=1))


def load_manifest(path: Path, data_root: Path | None = None) -> Manifest:
    """Load a manifest; `data_root` overrides the recorded root (a site's own mount)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: manifest not found; run `fedattack data split --config CFG` first"
        ) from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: manifest is not valid JSON ({e})") from None
    try:
        if raw["version"] != MANIFEST_VERSION:
            raise DatasetError(f"{path}: manifest version {raw['version']} unsupported")
        parts = {k: tuple(Sample.from_row(r) for r in v) for k, v in raw["parts"].items()}
        return Manifest(
            name=raw["name"], dataset=raw["dataset"], kind=raw["kind"],
            data_root=Path(data_root) if data_root else Path(raw["data_root"]),
            parts=parts, skipped=tuple(raw.get("skipped", ())),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed manifest ({e!r}); regenerate it") from None


def site_manifest_path(splits_dir: Path, site: str) -> Path:
    return splits_dir / f"site_{site}.json"


def test_manifest_path(splits_dir: Path, dataset: str) -> Path:
    return splits_dir / f"test_{dataset}.json"


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def split_patients(
    samples: tuple[Sample, ...], sites: tuple[str, ...], cfg: SplitConfig, seed: int, name: str
) -> dict[str, dict[str, list[Sample]]]:
    """Assign whole patients to test or to a site's train/val, stratified by patient label."""
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
    out.update({s: {"train": [], "val": []} for s in sites})
    for pids in strata.values():
        n_test = round(len(pids) * cfg.test_fraction)
        for pid in pids[:n_test]:
            out["test"]["test"].extend(by_patient[pid])
        rest = pids[n_test:]
        for i, site in enumerate(sites):
            chunk = rest[i :: len(sites)]
            n_val = round(len(chunk) * cfg.val_fraction)
            for j, pid in enumerate(chunk):
                out[site]["val" if j < n_val else "train"].extend(by_patient[pid])
    return out


def balance(part: list[Sample], positive_fraction: float, rng: np.random.Generator) -> list[Sample]:
    """Undersample negatives so positives make up `positive_fraction` of the part."""
    pos = [s for s in part if s.label == 1]
    neg = [s for s in part if s.label == 0]
    if not pos or len(pos) / len(part) >= positive_fraction:
        return part
    n_neg = round(len(pos) * (1 - positive_fraction) / positive_fraction)
    keep = sorted(rng.choice(len(neg), size=n_neg, replace=False).tolist())
    return sorted(pos + [neg[i] for i in keep], key=lambda s: s.image_id)


def _check_nonempty(site: str, dataset: str, parts: dict[str, list[Sample]]) -> None:
    for part, samples in parts.items():
        labels = {s.label for s in samples}
        if labels != {0, 1}:
            what = "is empty" if not samples else f"has only label {labels.pop()}"
            raise SplitError(
                f"site {site} ({dataset}) part {part!r} {what} after the split; "
                "add patients, lower data.split.max_patients' cap, or give the dataset fewer sites"
            )


def make_splits(data: DataConfig, seed: int, out_dir: Path) -> dict[str, Path]:
    """Read every dataset, split it, write the site and test manifests; return their paths."""
    written: dict[str, Path] = {}
    for name, ds in data.datasets.items():
        index: DatasetIndex = read_dataset(ds.kind, ds.root, data.skip_unreadable)
        if not index.samples:
            raise SplitError(f"dataset {name} at {ds.root}: no usable images")
        groups = split_patients(index.samples, ds.sites, data.split, seed, name)
        rng = _rng(seed, f"{name}:balance")
        for site in ds.sites:
            parts = groups[site]
            if data.split.balance_positive_fraction is not None:
                parts["train"] = balance(parts["train"], data.split.balance_positive_fraction, rng)
            _check_nonempty(site, name, parts)
            m = Manifest(f"site_{site}", name, ds.kind, ds.root,
                         {k: tuple(v) for k, v in parts.items()}, index.missing)
            path = site_manifest_path(out_dir, site)
            m.save(path)
            written[f"site_{site}"] = path
        _check_nonempty("test", name, groups["test"])
        test = Manifest(f"test_{name}", name, ds.kind, ds.root,
                        {"test": tuple(groups["test"]["test"])}, index.missing)
        path = test_manifest_path(out_dir, name)
        test.save(path)
        written[f"test_{name}"] = path
        log.info("split %s: %d images, %d skipped", name, len(index.samples), len(index.missing))
    return written
