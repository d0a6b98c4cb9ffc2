"""What one site does with a model: validate it, train it on its shard, validate it again.

A site only ever reads its own manifest and data root (from the SuperNode's node config).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from flwr.app import ArrayRecord

from shared.config.data import loader_workers, site_index
from shared.config.node import NodeConfig
from shared.config.run import RunSettings
from shared.data.cache import CachedPart, load_cached
from shared.data.fingerprint import manifest_digest
from shared.data.manifest import load_manifest
from shared.data.torchdata import make_loader
from shared.errors import ConfigError, FederationError
from shared.ml.adversarial import Proximal
from shared.ml.batchnorm import personal, recalibrate, statistics
from shared.ml.calibration import UNCALIBRATED, histogram
from shared.ml.finish import Finished, finish
from shared.ml.models import Classifier, build_model
from shared.ml.training import (
    StepSettings,
    balanced_weights,
    make_optimizer,
    metrics_from_logits,
    pick_device,
    predict,
    prepare,
    restart_batchnorm_statistics,
    train_epochs,
)
from shared.ml.wire import from_record
from shared.seeds import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteResult:
    """What a site sends back: its trained weights, its metrics, and the BatchNorm
    statistics of the model it received, re-estimated on its data (None when the run
    restarts the statistics instead). `personal_bn`: FedBN, the site's own BatchNorm
    tensors after training, which it keeps for the next round (never sent as such).
    `received_margins`: calibration, the per-class histogram of the received global's
    validation margins (shared.ml.calibration), sent with the fine-tune reply."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    received_bn: dict[str, torch.Tensor] | None
    personal_bn: dict[str, torch.Tensor] | None = None
    received_margins: np.ndarray | None = None


@dataclass(frozen=True)
class Instructions:
    """What this message asks beyond the run config: fine-tune or FedAvg round, FedProx's
    mu (0: none), and FedBN's "keep your own BatchNorm" with the site's kept tensors."""

    server_round: int
    finetune: bool = False
    proximal_mu: float = 0.0
    personal_bn: bool = False
    kept_bn: ArrayRecord | None = None  # FedBN: this site's BatchNorm from its last round


def check_pin(node: NodeConfig, run: RunSettings) -> None:
    """A site that pinned its image size (the size it prepared its data for) refuses a run
    at another size."""
    if node.image_size is not None and node.image_size != run.image_size:
        raise FederationError(
            f"site {node.site}: node config pins image-size {node.image_size} but the run trains "
            f"at {run.image_size}; align data.image_size and the node config"
        )


def site_data(node: NodeConfig, run: RunSettings, part: str) -> CachedPart:
    """One part (train or val) of this site's shard, decoded through the cache."""
    manifest = load_manifest(node.manifest, node.data_root)
    if manifest.name != f"site_{node.site}":
        raise ConfigError(
            f"site {node.site}: node config 'manifest' {node.manifest} belongs to {manifest.name}"
        )
    expected = run.split_digests.get(manifest.name)
    if expected is not None and manifest_digest(manifest) != expected:
        raise FederationError(
            f"site {node.site}: its manifest {node.manifest} is not the one of the split this run was "
            "submitted with (the fingerprints differ); give the site its shard from the same split"
        )
    return load_cached(manifest, part, run.image_size, node.cache_dir, run.workers, run.skip_unreadable)


def model_with(run: RunSettings, arrays: ArrayRecord, where: str) -> Classifier:
    """Build the run's architecture and load the packed weights received from the server."""
    model = build_model(run.arch, run.image_size, run.channels, net_size=run.net_size)
    model.load_state_dict(from_record(arrays, model.state_dict(), where))
    return model


def _threads(run: RunSettings) -> None:
    if run.training.threads > 0:
        torch.set_num_threads(run.training.threads)


def keep_personal_bn(model: Classifier, kept: ArrayRecord, where: str) -> None:
    """FedBN: put the site's own BatchNorm tensors back in place of the received ones."""
    own = personal(model)
    model.load_state_dict({**model.state_dict(), **from_record(kept, own, where)})


def train_site(site: NodeConfig, run: RunSettings, arrays: ArrayRecord, ask: Instructions) -> SiteResult:
    """Re-estimate the received global model's BatchNorm statistics on this site's data
    (FedBN: put the site's own BatchNorm back instead), validate it, train (or fine-tune)
    it on this site's shard, validate the result. Folding the global evaluation into the
    training message saves a full Flower round trip per round."""
    _threads(run)
    server_round, finetune = ask.server_round, ask.finetune
    site_number = site_index(site.site, run.sites)
    torch.manual_seed(
        derive_seed(run.seed, "site-torch", server_round=server_round, site=site_number, finetune=finetune)
    )
    device = pick_device(site.device)
    received = model_with(run, arrays, f"site {site.site}")
    own_bn = ask.personal_bn and ask.kept_bn is not None
    if own_bn:
        assert ask.kept_bn is not None
        keep_personal_bn(received, ask.kept_bn, f"site {site.site}'s kept BatchNorm")
    model = prepare(received, device, training=True)
    train = site_data(site, run, "train")
    val = site_data(site, run, "val")
    t = run.training
    workers = loader_workers(run.workers, len(run.sites))
    # validation and recalibration read with workers on a GPU; on the CPU they share its cores
    eval_workers = workers if device.type == "cuda" else 0
    val_loader = make_loader(val, run.channels, t.batch_size * 2, False, eval_workers, 0)
    bn = None
    if own_bn:  # FedBN: the site's own statistics are those of its own BatchNorm
        bn = statistics(model)
    elif t.batchnorm == "recalibrate":  # statistics of the received weights, on this site's data
        recalibrate(model, make_loader(train, run.channels, t.batch_size * 2, False, eval_workers, 0), device)
        bn = statistics(model)
    before_logits, val_labels = predict(model, val_loader, device)
    before = metrics_from_logits(before_logits, val_labels)
    if t.batchnorm == "restart" and not own_bn:
        restart_batchnorm_statistics(model)
    epochs = t.finetune_epochs if finetune else t.local_epochs
    lr = t.finetune_rate if finetune else t.optimizer.lr
    loader = make_loader(
        train,
        run.channels,
        t.batch_size,
        True,
        workers,
        seed=derive_seed(run.seed, "site-shuffle", server_round=server_round, site=site_number),
    )
    started = time.perf_counter()
    weights = balanced_weights(train.labels) if t.class_balance else None
    adv = t.adversarial
    adversarial = adv if adv is not None and (finetune or server_round >= adv.start_round) else None
    proximal = Proximal(model, ask.proximal_mu) if ask.proximal_mu > 0 else None
    optimizer = make_optimizer(model, t.optimizer, lr)
    trained = cast(torch.nn.Module, torch.compile(model)) if t.compile else model  # these passes only
    step = StepSettings.on(device, t.precision, t.augment)
    loss = train_epochs(trained, loader, optimizer, epochs, device, weights, adversarial, proximal, step)
    train_seconds = time.perf_counter() - started
    calibrate = finetune and t.calibration == "youden"
    done = finish(model, val_loader, device, calibrate=calibrate)  # the statistics it trained with
    after = done.metrics
    cut = _record(done, site.site) if calibrate else {}
    log.info(
        "site %s %s round %d: train loss %.4f, val auc %.3f -> %.3f",
        site.site,
        "finetune" if finetune else "train",
        server_round,
        loss,
        before.auc,
        after.auc,
    )
    metrics = {
        "num-examples": float(len(train)),
        "val-examples": float(len(val)),
        "train-loss": loss,
        "train-seconds": train_seconds,
        "adversarial": float(adversarial is not None),
        "own-batchnorm": float(own_bn),
        **before.as_metrics("global-val-"),
        **after.as_metrics("val-"),
        **cut,
    }
    return SiteResult(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        metrics,
        bn,
        personal(model) if ask.personal_bn else None,
        # FedBN: the margins of the site's personalised version say nothing about the
        # stored global (its BatchNorm is an average no site uses), so none are sent
        histogram(before_logits, val_labels) if calibrate and not ask.personal_bn else None,
    )


def _record(done: Finished, site: str) -> dict[str, float]:
    """The record of the fine-tuned model's calibration (shared.ml.finish): its threshold,
    and its sensitivity and specificity at argmax, before the fold. A validation part with
    one class cannot place a threshold: the model keeps argmax, recorded as
    val-calibrated 0."""
    if done.cut is None:
        log.warning(
            "site %s: validation part holds one class only: the local model keeps the argmax "
            "rule (raise data.split.val_fraction to calibrate it)",
            site,
        )
        return dict(UNCALIBRATED)
    record = {k: v for k, v in done.cut.as_metrics("val-").items() if "threshold" in k or "argmax" in k}
    return {**record, "val-calibrated": 1.0}
