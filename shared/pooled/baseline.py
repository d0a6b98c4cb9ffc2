"""The pooled baseline: what a central hospital network would train with every site's data.

Per architecture, one model trained on the union of the sites' train splits, from the
federation's own initial weights (torch seeded with the experiment's seed, as the server
seeds the round-0 global), for rounds x local_epochs epochs with the sites' optimizer,
learning rate, batch size, class balance, precision, augmentation and adversarial
training (from round start_round's epochs on). One optimizer runs through every epoch:
central training has no rounds. It is finished by the recipe of the outsider's surrogates
(shared.ml.finish): BatchNorm statistics re-estimated for the final weights on the
training images (what the stored global gets, pooled from the sites' re-estimates), the
decision threshold (training.calibration: youden) cut on the union of the sites'
validation splits and folded into the head. Stored as `<arch>-pooled`, kind "pooled",
with its hash and validation figures in the manifest like the federation's models; the
store is marked complete only once every pooled model is in it.

The baseline needs every site's data in one place, which only a simulation has: it runs
after `fedattack federate` (and demo, study) on one host, never in a networked deployment.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from shared.config.data import loader_workers
from shared.config.experiment import ExperimentConfig
from shared.config.run import run_settings_for
from shared.data.cache import load_cached
from shared.data.manifest import load_manifest, site_manifest_path
from shared.data.torchdata import CachedDataset
from shared.errors import CheckpointError, ConfigError
from shared.ml.calibration import UNCALIBRATED, bias_key
from shared.ml.finish import Finished, finish
from shared.ml.models import Classifier, build_model
from shared.ml.training import (
    StepSettings,
    balanced_weights,
    make_optimizer,
    pick_device,
    prepare,
    train_epochs,
)
from shared.seeds import derive_seed
from shared.store.checkpoint import ModelEntry, nonfinite_problem, verify_file
from shared.store.folder import CheckpointStore

log = logging.getLogger(__name__)
KIND = "pooled"


def pooled_name(arch: str) -> str:
    """The store's name of `arch`'s pooled model."""
    return f"{arch}-{KIND}"


@dataclass(frozen=True)
class PooledData:
    """One part (train or val) of every site's shard, as one dataset, with its labels."""

    data: ConcatDataset
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.data)


def sites_union(cfg: ExperimentConfig, part: str) -> PooledData:
    """The sites' `part` ("train" or "val") of the config's split, through the cache the
    sites read (output_dir/cache)."""
    sets, labels = [], []
    for site in cfg.data.sites:
        path = site_manifest_path(cfg.splits_dir, site)
        if not path.is_file():
            raise ConfigError(
                f"{path}: no split of site {site} for the pooled baseline; run `fedattack data split`"
            )
        cached = load_cached(
            load_manifest(path),
            part,
            cfg.data.image_size,
            cfg.cache_dir,
            cfg.data.workers,
            cfg.data.skip_unreadable,
        )
        sets.append(CachedDataset(cached, cfg.data.channels))
        labels.append(np.asarray(cached.labels, dtype=np.int64))
    return PooledData(ConcatDataset(sets), np.concatenate(labels))


def train_pooled(cfg: ExperimentConfig, store: CheckpointStore, resume: bool = False) -> list[ModelEntry]:
    """Train (or, resuming, keep a verified stored) pooled model per architecture, store
    each, then mark the store complete when everything it expects is in it."""
    fed = cfg.federation
    train, val = sites_union(cfg, "train"), sites_union(cfg, "val")
    device = pick_device()
    entries = []
    threads = torch.get_num_threads()
    try:
        for arch in fed.architectures:
            kept = _kept(store, pooled_name(arch)) if resume else None
            entries.append(kept or _train_and_store(cfg, arch, store, train, val, device))
    finally:
        torch.set_num_threads(threads)  # training.threads holds for the training only
    store.mark_complete(  # what the ServerApp expected, now with the pooled models in
        list(fed.architectures),
        list(cfg.data.sites),
        fed.min_sites,
        pooled=True,
        site_archs=fed.site_architectures or None,  # feddf: each site's local is of its architecture
    )
    return entries


def _kept(store: CheckpointStore, name: str) -> ModelEntry | None:
    """A stored pooled model whose file verifies as the attack verifies it (hash, the file's
    own description against the manifest entry, finite values); None otherwise."""
    entry = next((e for e in store.models() if e.name == name), None)
    if entry is None:
        return None
    path = store.root / entry.file
    try:
        problem = nonfinite_problem(verify_file(entry, path.read_bytes(), str(path)))
        if problem:
            raise CheckpointError(f"{path}: {problem}")
    except (OSError, CheckpointError) as e:
        log.warning("%s: retraining the pooled model (%s)", name, e)
        return None
    print(
        f"[pooled] keeping the stored {name} (val AUC {entry.metrics.get('val-auc', math.nan):.3f})",
        flush=True,
    )
    return entry


def _train_and_store(
    cfg: ExperimentConfig,
    arch: str,
    store: CheckpointStore,
    train: PooledData,
    val: PooledData,
    device: torch.device,
) -> ModelEntry:
    model, metrics = train_one(cfg, arch, train, val, device)
    record = run_settings_for(cfg, arch, store.root, False).training_record
    return store.save_model(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        name=pooled_name(arch),
        arch=arch,
        kind=KIND,
        site=None,
        round=cfg.federation.rounds,
        input=model.spec,
        metrics=metrics,
        training={**record, "strategy": "central (pooled data)"},
    )


def initial_model(cfg: ExperimentConfig, arch: str) -> Classifier:
    """The federation's initial global of `arch`: the server seeds torch with the
    experiment's seed and builds it the same way (server.federation)."""
    torch.manual_seed(cfg.seed)
    pretrained = cfg.training.pretrained.get(arch)
    model = build_model(
        arch,
        cfg.data.image_size,
        cfg.data.channels,
        Path(pretrained) if pretrained else None,
        cfg.training.net_size(arch),
    )
    if cfg.training.calibration == "youden":
        bias_key(model)  # an architecture without a 2-class linear head: fail before training
    return model


def train_one(
    cfg: ExperimentConfig, arch: str, train: PooledData, val: PooledData, device: torch.device
) -> tuple[Classifier, dict[str, float]]:
    """`arch`'s pooled model, trained and finished (left in eval mode on `device`), and its
    figures as the manifest records them (the sites' metric names)."""
    t, rounds = cfg.training.for_arch(arch), cfg.federation.rounds
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    model = initial_model(cfg, arch)
    torch.manual_seed(derive_seed(cfg.seed, "pooled-torch"))
    prepare(model, device, training=True)
    workers = loader_workers(cfg.data.workers)
    loader = DataLoader(
        train.data,
        batch_size=t.batch_size,
        shuffle=True,
        drop_last=len(train) > t.batch_size,  # no 1-image BatchNorm batches
        num_workers=workers,
        generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "pooled-shuffle")),
        pin_memory=device.type == "cuda",
    )
    epochs = rounds * t.local_epochs
    print(
        f"[pooled] training {arch} on the union of the sites' train splits ({len(train)} images, "
        f"{epochs} epochs = {rounds} rounds x {t.local_epochs})",
        flush=True,
    )
    weights = balanced_weights(train.labels) if t.class_balance else None
    optimizer = make_optimizer(model, t.optimizer)
    trained = cast(nn.Module, torch.compile(model)) if t.compile else model
    step = StepSettings.on(device, t.precision, t.augment)
    adv = t.adversarial
    # the sites train adversarially from round start_round on: so do the matching epochs
    clean = epochs if adv is None else min(rounds, adv.start_round - 1) * t.local_epochs
    started, loss = time.perf_counter(), math.nan
    if clean:
        loss = train_epochs(trained, loader, optimizer, clean, device, weights, None, None, step)
    if epochs - clean:
        loss = train_epochs(trained, loader, optimizer, epochs - clean, device, weights, adv, None, step)
    seconds = time.perf_counter() - started
    eval_workers = workers if device.type == "cuda" else 0
    calibrate = t.calibration == "youden"
    done = finish(
        model,
        DataLoader(val.data, batch_size=2 * t.batch_size, num_workers=eval_workers),
        device,
        calibrate=calibrate,
        # the statistics of the final weights, over the training images in a fixed order
        batchnorm=DataLoader(train.data, batch_size=2 * t.batch_size, num_workers=eval_workers),
    )
    result = done.metrics
    print(
        f"[pooled] {arch}: train loss {loss:.3f}, val AUC {result.auc:.3f}, sensitivity "
        f"{result.sensitivity:.2f}, specificity {result.specificity:.2f} (n={result.n}"
        + ("" if done.cut is None else f", threshold {done.cut.threshold:+.2f}")
        + f", {seconds:.0f}s)",
        flush=True,
    )
    metrics = {
        "num-examples": float(len(train)),
        "val-examples": float(len(val)),
        "train-loss": loss,
        "train-seconds": seconds,
        "adversarial": float(adv is not None),
        **result.as_metrics("val-"),
        **(_calibration_record(done, arch) if calibrate else {}),
    }
    return model, metrics


def _calibration_record(done: Finished, arch: str) -> dict[str, float]:
    """The threshold and the argmax figures before it, as a site records its local's; a
    validation union with one class keeps argmax (val-calibrated 0)."""
    if done.cut is None:
        log.warning(
            "%s: the sites' validation parts hold one class: it keeps the argmax rule", pooled_name(arch)
        )
        return dict(UNCALIBRATED)
    record = {k: v for k, v in done.cut.as_metrics("val-").items() if "threshold" in k or "argmax" in k}
    return {**record, "val-calibrated": 1.0}
