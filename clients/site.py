"""What one site does with a model: train on its shard, evaluate on its validation part.

A site only ever reads its own manifest and data root (from the SuperNode's node config).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from shared.config import SITES
from shared.data.cache import CachedPart, load_cached
from shared.data.splits import load_manifest
from shared.data.torchdata import make_loader
from shared.errors import ConfigError, FederationError
from shared.models import Classifier, build_model
from shared.packing import from_record
from shared.runconfig import RunSettings
from shared.training import (
    evaluate,
    make_optimizer,
    pick_device,
    prepare,
    restart_batchnorm_statistics,
    train_epochs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteSettings:
    """Per-site facts, from `flower-supernode --node-config`."""

    site: str
    manifest: Path
    data_root: Path | None
    cache_dir: Path
    device: str
    image_size: int | None  # optional pin: the size this site prepared its data for

    @classmethod
    def from_node_config(cls, nc: dict[str, Any]) -> SiteSettings:
        site = str(nc.get("site", ""))
        if site not in SITES:
            raise ConfigError(
                f"node config: 'site' must be one of {list(SITES)}, got {site!r}; start the "
                "SuperNode with --node-config \"site='A' manifest='/path/site_A.json'\""
            )
        manifest = Path(str(nc.get("manifest", "")))
        if not manifest.is_file():
            raise ConfigError(f"site {site}: node config 'manifest' {str(manifest)!r} is not a file")
        cache = nc.get("cache-dir") or manifest.parent.parent / "cache"
        size = nc.get("image-size")
        return cls(
            site=site,
            manifest=manifest,
            data_root=Path(str(nc["data-root"])) if nc.get("data-root") else None,
            cache_dir=Path(str(cache)),
            device=str(nc.get("device", "")),
            image_size=int(size) if size else None,
        )


def check_agreement(site: SiteSettings, run: RunSettings, arch: str, image_size: int) -> None:
    """The server's message, the run config and the site's pins must agree."""
    if arch != run.arch:
        raise FederationError(f"site {site.site}: server sent arch {arch!r}, run config says {run.arch!r}")
    if image_size != run.image_size:
        raise FederationError(
            f"site {site.site}: server sent image size {image_size}, run config says {run.image_size}"
        )
    if site.image_size is not None and site.image_size != image_size:
        raise FederationError(
            f"site {site.site}: node config pins image-size {site.image_size} but the server "
            f"trains at {image_size}; align data.image_size and the node config"
        )


def site_data(site: SiteSettings, run: RunSettings, part: str) -> CachedPart:
    manifest = load_manifest(site.manifest, site.data_root)
    if manifest.name != f"site_{site.site}":
        raise ConfigError(
            f"site {site.site}: node config 'manifest' {site.manifest} belongs to {manifest.name}"
        )
    return load_cached(manifest, part, run.image_size, site.cache_dir, run.workers)


def model_with(run: RunSettings, arrays: ArrayRecord, where: str) -> Classifier:
    """Build the run's architecture and load the packed weights received from the server."""
    model = build_model(run.arch, run.image_size, run.channels)
    model.load_state_dict(from_record(arrays, model.state_dict(), where))
    return model


def _threads(run: RunSettings) -> None:
    if run.threads > 0:
        torch.set_num_threads(run.threads)


def train_site(
    site: SiteSettings, run: RunSettings, arrays: ArrayRecord, server_round: int, finetune: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Validate the received global model, train (or fine-tune) it on this site's shard,
    validate the result. Folding the global evaluation into the training message saves
    a full Flower round trip per round."""
    _threads(run)
    site_index = SITES.index(site.site)
    torch.manual_seed(run.seed * 10_000 + server_round * 10 + site_index + (5 if finetune else 0))
    device = pick_device(site.device)
    model = prepare(model_with(run, arrays, f"site {site.site}"), device)
    train = site_data(site, run, "train")
    val = site_data(site, run, "val")
    val_loader = make_loader(val, run.channels, run.batch_size * 2, False, 0, 0)
    before = evaluate(model, val_loader, device)
    restart_batchnorm_statistics(model)
    epochs = run.finetune_epochs if finetune else run.local_epochs
    lr = run.finetune_lr if finetune else run.optimizer.lr
    loader = make_loader(train, run.channels, run.batch_size, True, run.workers,
                         seed=run.seed + server_round * 100 + site_index)
    started = time.perf_counter()
    loss = train_epochs(model, loader, make_optimizer(model, run.optimizer, lr), epochs, device)
    train_seconds = time.perf_counter() - started
    after = evaluate(model, val_loader, device)
    log.info("site %s %s round %d: train loss %.4f, val auc %.3f -> %.3f", site.site,
             "finetune" if finetune else "train", server_round, loss, before.auc, after.auc)
    metrics = {"num-examples": float(len(train)), "val-examples": float(len(val)),
               "train-loss": loss, "train-seconds": train_seconds,
               **before.as_metrics("global-val-"), **after.as_metrics("val-")}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics


def evaluate_site(
    site: SiteSettings, run: RunSettings, arrays: ArrayRecord
) -> dict[str, float]:
    """Validation metrics of the received model on this site's validation part."""
    _threads(run)
    device = pick_device(site.device)
    model = prepare(model_with(run, arrays, f"site {site.site}"), device)
    val = site_data(site, run, "val")
    result = evaluate(model, make_loader(val, run.channels, run.batch_size * 2, False, 0, 0), device)
    return {"num-examples": float(len(val)), **result.as_metrics("val-")}
