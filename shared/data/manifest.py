"""The manifest file: one site shard (parts train/val), test set (part test) or public split
(parts train/val), with its data root; the one place that knows the file format and where
each manifest lives in the splits folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.data.records import Sample
from shared.errors import DatasetError
from shared.io import atomic_write

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """A site shard or public split (parts train/val) or a test set (part test), with its data root."""

    name: str  # "site_A", "test_nih" or "public_nih"
    dataset: str
    kind: str
    data_root: Path
    parts: dict[str, tuple[Sample, ...]]
    skipped: tuple[str, ...] = ()
    # How a site's shard was dealt from its dataset (shared.config.data's PartitionConfig
    # .describe()) when not the iid round robin; "" for iid, test and public manifests,
    # whose files then stay as they always were.
    partition: str = ""

    def part(self, name: str) -> tuple[Sample, ...]:
        try:
            return self.parts[name]
        except KeyError:
            raise DatasetError(f"manifest {self.name}: no part {name!r}; has {sorted(self.parts)}") from None

    def to_json(self) -> dict[str, Any]:
        partition = {"partition": self.partition} if self.partition else {}
        return {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "dataset": self.dataset,
            "kind": self.kind,
            **partition,
            "data_root": str(self.data_root),
            "parts": {k: [s.to_row() for s in v] for k, v in self.parts.items()},
            "skipped": list(self.skipped),
            "counts": {
                k: {
                    "images": len(v),
                    "positives": sum(s.label for s in v),
                    "patients": len({s.patient_id for s in v}),
                }
                for k, v in self.parts.items()
            },
        }

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=1))


def load_manifest(path: Path, data_root: Path | None = None) -> Manifest:
    """Load a manifest; `data_root` overrides the recorded root (a site's own mount). A
    relative recorded root is the manifest's own folder's: an exported folder (images and
    manifest, `fedattack deploy prepare-data`) reads the same wherever it is mounted."""
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
            name=raw["name"],
            dataset=raw["dataset"],
            kind=raw["kind"],
            data_root=Path(data_root) if data_root else Path(path).parent / raw["data_root"],
            parts=parts,
            skipped=tuple(raw.get("skipped", ())),
            partition=str(raw.get("partition", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed manifest ({e!r}); regenerate it") from None


def site_manifest_path(splits_dir: Path, site: str) -> Path:
    return splits_dir / f"site_{site}.json"


def test_manifest_path(splits_dir: Path, dataset: str) -> Path:
    return splits_dir / f"test_{dataset}.json"


def public_manifest_path(splits_dir: Path, dataset: str) -> Path:
    """The public split of a dataset (data.split.public_fraction): no site and no test set
    holds these patients; the outsider threat trains its surrogates on them."""
    return splits_dir / f"public_{dataset}.json"
