"""The held-out test sets the attack uses: every image (for clean performance) and the
pneumonia images (the attack set), checked against the split the federation trained on."""

from __future__ import annotations

import numpy as np
import torch

from attack.measure.clean import TestSet
from attack.measure.core import AttackSet
from shared.config.experiment import ExperimentConfig
from shared.data.cache import load_cached
from shared.data.fingerprint import manifest_digest
from shared.data.manifest import load_manifest, test_manifest_path
from shared.errors import AttackError, CheckpointError
from shared.prep.splits import make_splits


def load_test_sets(cfg: ExperimentConfig) -> tuple[TestSet, dict[str, str]]:
    """Every test image of every dataset, and each test manifest's digest."""
    paths = {name: test_manifest_path(cfg.splits_dir, name) for name in cfg.data.datasets}
    if not all(p.exists() for p in paths.values()):
        make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir)  # checked against the store's record below
    images, labels, ids, digests = [], [], [], {}
    for path in paths.values():
        manifest = load_manifest(path)
        digests[manifest.name] = manifest_digest(manifest)
        part = load_cached(
            manifest,
            "test",
            cfg.data.image_size,
            cfg.cache_dir,
            cfg.data.workers,
            cfg.data.skip_unreadable,
            cfg.data.max_pixels,
        )
        images.append(np.asarray(part.images))
        labels.append(part.labels)
        ids += [f"{manifest.name}/{i}" for i in part.ids]
    x = torch.from_numpy(np.concatenate(images)).float().div_(255.0).unsqueeze(1)
    if cfg.data.channels != 1:
        x = x.expand(-1, cfg.data.channels, -1, -1).contiguous()
    return TestSet(x, torch.from_numpy(np.concatenate(labels)), tuple(ids)), digests


def attack_set(test: TestSet, max_per_dataset: int | None = None) -> AttackSet:
    """The pneumonia images of the test sets (at most `max_per_dataset` of each, in order)."""
    keep: list[int] = []
    for dataset in dict.fromkeys(i.split("/")[0] for i in test.ids):
        pos = [k for k, i in enumerate(test.ids) if i.startswith(dataset + "/") and int(test.labels[k]) == 1]
        keep += pos if max_per_dataset is None else pos[:max_per_dataset]
    if not keep:
        raise AttackError("the held-out test sets hold no pneumonia images to attack")
    return AttackSet(test.images[keep], tuple(test.ids[k] for k in keep))


def check_split(recorded: dict[str, str] | None, digests: dict[str, str], store: str) -> str:
    """Refuse test sets that are not the ones of the split the store was trained on; return
    the fingerprint to record ('unknown' for a store that recorded none)."""
    if not recorded:
        return "unknown (the store records no split)"
    for name, digest in digests.items():
        if name not in recorded:
            raise CheckpointError(
                f"{store}: the store's split has no {name}; the test sets come from another split"
            )
        if recorded[name] != digest:
            raise CheckpointError(
                f"{store}: test set {name} differs from the one of the split the federation trained on "
                f"(digest {digest[:12]}..., store {recorded[name][:12]}...); use the split the store was "
                "trained with (its splits folder), not a new one"
            )
    return ",".join(f"{k}={recorded[k][:16]}" for k in sorted(digests))
