"""The outsider's surrogates: one model per architecture trained from scratch on the public
split (patient-disjoint from every site and from the test sets), with no federation
weights. Each is finished by the recipe that finishes the sites' models (shared.ml.finish):
after training, its BatchNorm statistics are re-estimated for its final weights on its
training images, and (with `training.calibration: youden`) its decision threshold is cut on
the public validation images and folded into its head, so "correctly classified" means the
same for a surrogate as for a federation model. Without that, a surrogate trained from random init kept
running statistics that lag its weights: on the seed-9 demo's public split ResNet50 and
InceptionV3 reached public validation AUC 0.500 and 0.542, and ResNet50 called every
pneumonia image negative (its rows were empty). Trained once and kept under the output
folder with their hashes; a later run with the same settings and the same public split
reuses them after verifying every file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from shared.config.experiment import ExperimentConfig
from shared.config.training import OptimizerConfig
from shared.data.cache import load_cached
from shared.data.fingerprint import manifest_digest
from shared.data.manifest import load_manifest, public_manifest_path
from shared.data.torchdata import CachedDataset
from shared.errors import AttackError, CheckpointError
from shared.io import atomic_write
from shared.ml.finish import finish
from shared.ml.models import Classifier, build_model, model_from_state
from shared.ml.training import balanced_weights, make_optimizer, pick_device, prepare, train_epochs
from shared.seeds import derive_seed
from shared.store.checkpoint import decode_state, encode_state, sha256_bytes

log = logging.getLogger(__name__)
INDEX = "outsiders.json"
# what a surrogate is after training (part of its reuse key): BatchNorm statistics
# re-estimated, then the calibrated threshold
RECIPE = "recalibrated-bn+threshold"


def public_split(cfg: ExperimentConfig, part: str) -> tuple[ConcatDataset, list[str]]:
    """The public split's `part` ("train" or "val") over every dataset, and each dataset's
    manifest digest."""
    sets, digests = [], []
    for name in cfg.data.datasets:
        path = public_manifest_path(cfg.splits_dir, name)
        if not path.is_file():
            raise AttackError(
                f"{path}: no public split for the outsider threat; set data.split.public_fraction "
                "(e.g. 0.15) and re-split, or leave 'outsider' out of attack.suite.threats"
            )
        manifest = load_manifest(path)
        cached = load_cached(
            manifest, part, cfg.data.image_size, cfg.cache_dir, cfg.data.workers, cfg.data.skip_unreadable
        )
        sets.append(CachedDataset(cached, cfg.data.channels))
        digests.append(manifest_digest(manifest))
    return ConcatDataset(sets), digests


def _fresh(cfg: ExperimentConfig, arch: str) -> Classifier:
    """An untrained surrogate of `arch`, seeing images at the size the federation's do."""
    return build_model(arch, cfg.data.image_size, cfg.data.channels, net_size=cfg.training.net_size(arch))


def _key(cfg: ExperimentConfig, arch: str, digests: list[str]) -> str:
    o = cfg.attack.outsider
    return sha256_bytes(
        json.dumps(
            [
                arch,
                cfg.data.image_size,
                cfg.data.channels,
                cfg.training.net_size(arch),
                o.epochs,
                o.lr,
                o.batch_size,
                cfg.training.class_balance,
                cfg.training.calibration,
                RECIPE,
                cfg.training.optimizer.name,
                cfg.training.optimizer.weight_decay,
                cfg.training.optimizer.momentum,
                cfg.seed,
                digests,
            ]
        ).encode()
    )


def train_outsiders(cfg: ExperimentConfig, out: Path, archs: tuple[str, ...]) -> dict[str, nn.Module]:
    """One surrogate per architecture, trained (or reused) on the public split only."""
    train, digests = public_split(cfg, "train")
    val, _ = public_split(cfg, "val")
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    models: dict[str, nn.Module] = {}
    device = pick_device()
    for arch in archs:
        key = _key(cfg, arch, digests)
        entry = index.get(arch)
        if entry and entry.get("key") == key and (out / entry["file"]).is_file():
            try:
                state = decode_state(
                    (out / entry["file"]).read_bytes(), entry["sha256"], str(out / entry["file"])
                )
                models[arch] = model_from_state(arch, _fresh(cfg, arch).spec, state)
                log.info("outsider %s: reusing %s (val AUC %.3f)", arch, entry["file"], entry["val-auc"])
                continue
            except CheckpointError as e:
                log.warning("outsider %s: retraining (%s)", arch, e)
        models[arch], auc = _train(cfg, arch, train, val, device)
        data = encode_state(models[arch].state_dict(), {"arch": arch, "kind": "outsider"})
        atomic_write(out / f"outsider-{arch}.safetensors", data, durable=True)
        index[arch] = {
            "key": key,
            "file": f"outsider-{arch}.safetensors",
            "sha256": sha256_bytes(data),
            "val-auc": auc,
        }
        atomic_write(index_path, json.dumps(index, indent=1))
    return models


def _train(
    cfg: ExperimentConfig, arch: str, train: ConcatDataset, val: ConcatDataset, device: torch.device
) -> tuple[nn.Module, float]:
    o = cfg.attack.outsider
    torch.manual_seed(derive_seed(cfg.seed, "outsider-torch"))
    model = prepare(_fresh(cfg, arch), device, training=True)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "outsider-shuffle"))
    loader = DataLoader(
        train, batch_size=o.batch_size, shuffle=True, drop_last=len(train) > o.batch_size, generator=g
    )
    opt = make_optimizer(
        model,
        OptimizerConfig(
            cfg.training.optimizer.name,
            o.lr,
            cfg.training.optimizer.weight_decay,
            cfg.training.optimizer.momentum,
        ),
    )
    print(
        f"[outsider] training {arch} on the public split ({len(train)} images, {o.epochs} epochs)", flush=True
    )
    weights = None
    if cfg.training.class_balance:  # the sites' loss weighting, on the public labels
        labels = np.concatenate([d.part.labels for d in train.datasets if isinstance(d, CachedDataset)])
        weights = balanced_weights(labels)
    loss = train_epochs(model, loader, opt, o.epochs, device, weights)
    done = finish(
        model,
        DataLoader(val, batch_size=2 * o.batch_size),
        device,
        calibrate=cfg.training.calibration == "youden",
        # the statistics of the final weights, over the training images in a fixed order
        batchnorm=DataLoader(train, batch_size=o.batch_size),
    )
    cut = "" if done.cut is None else f", threshold {done.cut.threshold:+.2f}"
    result = done.metrics
    print(
        f"[outsider] {arch}: train loss {loss:.3f}, public val AUC {result.auc:.3f}, sensitivity "
        f"{result.sensitivity:.2f}, specificity {result.specificity:.2f} (n={result.n}{cut})",
        flush=True,
    )
    # back to the default layout: a surrogate crafts alike whether trained now or reused
    return model.cpu().to(memory_format=torch.contiguous_format).eval(), float(result.auc)
