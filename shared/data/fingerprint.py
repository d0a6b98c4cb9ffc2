"""The fingerprint of a split: one digest per manifest over what defines it (its name, its
parts, every sample's image id, patient id and label), never the data root, which differs
from host to host, plus one combined digest over all of them. `make_splits` records it in
`<splits>/fingerprint.json`; the store records it at training time; the attack refuses test
sets whose digest differs, and a site refuses a run submitted with another split of its shard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shared.data.manifest import Manifest, load_manifest
from shared.io import atomic_write

FINGERPRINT_FILE = "fingerprint.json"
MANIFEST_PREFIXES = ("site_", "test_", "public_")


def manifest_digest(m: Manifest) -> str:
    """sha256 over the manifest's name, dataset and samples (ids, patients, labels, parts),
    and its partition when skewed."""
    body = {
        "name": m.name,
        "dataset": m.dataset,
        "parts": {k: [[s.image_id, s.patient_id, s.label] for s in v] for k, v in sorted(m.parts.items())},
        **({"partition": m.partition} if m.partition else {}),  # iid manifests' digests as they were
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def split_fingerprint(splits_dir: Path) -> dict[str, str]:
    """Manifest name -> digest for every manifest in `splits_dir` (site_*, test_*, public_*)."""
    out = {}
    for path in sorted(Path(splits_dir).glob("*.json")):
        if path.name == FINGERPRINT_FILE or not path.stem.startswith(MANIFEST_PREFIXES):
            continue
        m = load_manifest(path)
        out[m.name] = manifest_digest(m)
    return out


def combined_digest(digests: dict[str, str]) -> str:
    """One sha256 over every manifest's name and digest: the whole split in one line."""
    return hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()


def write_fingerprint(splits_dir: Path) -> dict[str, Any]:
    """Record the split's fingerprint in `<splits_dir>/fingerprint.json` and return it."""
    digests = split_fingerprint(splits_dir)
    body = {"manifests": digests, "combined": combined_digest(digests)}
    atomic_write(Path(splits_dir) / FINGERPRINT_FILE, json.dumps(body, indent=1))
    return body
