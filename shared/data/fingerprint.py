"""The fingerprint of a split: one digest per manifest over what defines it (its name, its
parts, every sample's image id, patient id and label), never the data root, which differs
from host to host. The store records it at training time; the attack refuses test sets
whose digest differs, and a site refuses a run submitted with another split of its shard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared.data.splits import Manifest, load_manifest

FINGERPRINT_FILE = "fingerprint.json"


def manifest_digest(m: Manifest) -> str:
    """sha256 over the manifest's name, dataset and samples (ids, patients, labels, parts)."""
    body = {
        "name": m.name,
        "dataset": m.dataset,
        "parts": {k: [[s.image_id, s.patient_id, s.label] for s in v] for k, v in sorted(m.parts.items())},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def split_fingerprint(splits_dir: Path) -> dict[str, str]:
    """Manifest name -> digest for every manifest in `splits_dir` (site_*, test_*, public_*)."""
    out = {}
    for path in sorted(Path(splits_dir).glob("*.json")):
        if path.name == FINGERPRINT_FILE or not path.stem.startswith(("site_", "test_", "public_")):
            continue
        m = load_manifest(path)
        out[m.name] = manifest_digest(m)
    return out
