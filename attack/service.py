"""`fedattack attack`: pull and verify the checkpoints, build the attack set, measure, report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from attack.attacks import build_attack
from attack.fetch import StoreSnapshot, fetch_state, read_manifest, tls_context, wait_for_complete
from attack.report import write_outputs
from attack.transfer import AttackSet, LoadedModel, measure
from shared.config import ExperimentConfig
from shared.data.cache import load_cached
from shared.data.splits import load_manifest, make_splits, test_manifest_path
from shared.errors import AttackError, CheckpointError
from shared.models import model_from_state
from shared.training import pick_device

log = logging.getLogger(__name__)


def load_attack_set(cfg: ExperimentConfig) -> AttackSet:
    """Pneumonia images of every dataset's held-out test set (no site trained on them)."""
    paths = {name: test_manifest_path(cfg.splits_dir, name) for name in cfg.data.datasets}
    if not all(p.exists() for p in paths.values()):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    images, ids = [], []
    for path in paths.values():
        manifest = load_manifest(path)
        part = load_cached(
            manifest, "test", cfg.data.image_size, cfg.cache_dir, cfg.data.workers, cfg.data.skip_unreadable
        )
        pos = np.flatnonzero(part.labels == 1)
        if cfg.attack.max_images_per_dataset is not None:
            pos = pos[: cfg.attack.max_images_per_dataset]
        images.append(np.asarray(part.images[pos]))
        ids += [f"{manifest.name}/{part.ids[i]}" for i in pos]
    x = torch.from_numpy(np.concatenate(images)).float().div_(255.0).unsqueeze(1)
    if cfg.data.channels != 1:
        x = x.expand(-1, cfg.data.channels, -1, -1).contiguous()
    if len(ids) == 0:
        raise AttackError("the held-out test sets hold no pneumonia images to attack")
    return AttackSet(x, tuple(ids))


def load_models(
    snap: StoreSnapshot, cfg: ExperimentConfig, cache: Path, skip_bad: bool
) -> tuple[list[LoadedModel], list[dict]]:
    """Verify and load every model of the store; refuse (or, with skip_bad, skip) bad ones."""
    models, skipped = [], []
    for entry in snap.models:
        try:
            if entry.input.size != cfg.data.image_size or entry.input.channels != cfg.data.channels:
                raise CheckpointError(
                    f"{entry.name}: trained on {entry.input.size} px x {entry.input.channels} ch, "
                    f"the attack config uses {cfg.data.image_size} px x {cfg.data.channels} ch"
                )
            state = fetch_state(snap, entry, cache)
            model = model_from_state(entry.arch, entry.input, state).eval()
            models.append(LoadedModel(entry, model))
        except CheckpointError as e:
            if not skip_bad:
                raise CheckpointError(f"{e} (pass --skip-bad to measure without it)") from None
            log.warning("skipping %s: %s", entry.name, e)
            skipped.append({"name": entry.name, "reason": str(e)})
    if not models:
        raise AttackError("no usable model in the checkpoint store")
    return models, skipped


def run_attack(
    cfg: ExperimentConfig,
    store: str,
    out: Path,
    skip_bad: bool = False,
    watch: bool = False,
    progress: bool = True,
    root_certificates: Path | None = None,
) -> Path:
    """The whole job; returns the report path. `root_certificates`: the CA that an
    https:// store's certificate must chain to (default: the system's CAs)."""
    attack = build_attack(cfg.attack.name, cfg.attack.eps)
    context = tls_context(root_certificates)
    if watch:
        snap = wait_for_complete(store, context=context)
    else:
        snap = read_manifest(store, context)
        if not snap.manifest["complete"]:
            raise CheckpointError(
                f"{store}: the checkpoint store is incomplete (federation still running or "
                "failed); wait for it, or use --watch"
            )
    torch.manual_seed(cfg.seed)
    models, skipped = load_models(snap, cfg, out / ".checkpoints", skip_bad)
    data = load_attack_set(cfg)
    log.info("attack set: %d pneumonia images; %d models", len(data), len(models))
    result = measure(models, attack, data, cfg.attack.batch_size, pick_device(), progress)
    meta = {
        "attack": attack.name,
        "eps": cfg.attack.eps,
        "seed": cfg.seed,
        "store": store,
        "n_images": len(data),
        "image_size": cfg.data.image_size,
        "skipped": skipped,
    }
    entries = {m.entry.name: m.entry for m in models}
    write_outputs(out, result, entries, meta)
    cfg.dump(out / "config.yaml")
    return out / "report.md"
