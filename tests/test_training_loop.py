"""The site's training loop: precision per device, the optional augmentation, losses summed
without a per-step host sync, and persistent loader workers that keep the seed's batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shared.config.data import loader_workers
from shared.config.training import OptimizerConfig
from shared.data.cache import CachedPart
from shared.data.torchdata import CachedDataset, make_loader
from shared.ml.models import build_model
from shared.ml.training import ROTATION_DEG, StepSettings, augment_batch, make_optimizer, train_epochs


def _part(n: int = 24, size: int = 32) -> CachedPart:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    return CachedPart(images, np.arange(n) % 2, tuple(f"i{i}" for i in range(n)), (), Path("."))


@pytest.mark.unit
def test_precision_applies_on_cuda_only() -> None:
    assert StepSettings.on(torch.device("cpu"), "fp16").amp is None
    assert StepSettings.on(torch.device("cuda"), "bf16").amp == torch.bfloat16
    assert StepSettings.on(torch.device("cuda"), "fp16").amp == torch.float16
    assert StepSettings.on(torch.device("cuda"), "fp32").amp is None


@pytest.mark.unit
def test_loader_workers_auto_is_the_cores_shared_by_the_sites() -> None:
    assert loader_workers(3, 4) == 3 and loader_workers(0) == 0
    cores = len(__import__("os").sched_getaffinity(0))
    assert loader_workers(-1, 1) == max(1, min(8, cores))
    assert loader_workers(-1, 64) == 1


@pytest.mark.unit
def test_augmentation_is_a_small_crop_and_rotation_per_image() -> None:
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 64).repeat(4, 1, 64, 1)  # a horizontal ramp
    out = augment_batch(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out[0], out[1]), "each image draws its own crop"
    # the ramp's slope grows by at most 1/sqrt(0.85) and turns by at most ROTATION_DEG
    gx = (out[:, 0, 20:44, 21:45] - out[:, 0, 20:44, 19:43]).mean((1, 2)) / (2 / 63)
    gy = (out[:, 0, 21:45, 20:44] - out[:, 0, 19:43, 20:44]).mean((1, 2)) / (2 / 63)
    angle = torch.rad2deg(torch.atan2(gy, gx)).abs()
    assert (angle <= ROTATION_DEG + 0.5).all(), angle
    assert ((gx**2 + gy**2).sqrt() <= 1 / math.sqrt(0.85) + 0.02).all()


@pytest.mark.unit
def test_the_epoch_loss_is_the_mean_of_the_step_losses_as_floats() -> None:
    """The device-side float64 sum equals the per-step Python float sum of before, bit for bit."""
    part = _part()
    torch.manual_seed(1)
    model = build_model("resnet18", 32, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, OptimizerConfig(lr=1e-3))
    loss = train_epochs(model, make_loader(part, 1, 8, True, 0, 3), opt, 1, torch.device("cpu"))
    torch.manual_seed(1)
    model.load_state_dict(state)
    opt = make_optimizer(model, OptimizerConfig(lr=1e-3))
    model.train()
    total, n = 0.0, 0
    for x, y in make_loader(part, 1, 8, True, 0, 3):
        opt.zero_grad()
        step_loss = torch.nn.functional.cross_entropy(model(x), y)
        step_loss.backward()
        opt.step()
        total, n = total + float(step_loss.detach()) * len(y), n + len(y)
    assert loss == total / n


@pytest.mark.unit
def test_augmented_training_runs_and_stays_off_by_default() -> None:
    part = _part()
    model = build_model("resnet18", 32, 1)
    opt = make_optimizer(model, OptimizerConfig())
    loader = make_loader(part, 1, 8, True, 0, 3)
    loss = train_epochs(model, loader, opt, 1, torch.device("cpu"), step=StepSettings(augment=True))
    assert math.isfinite(loss) and StepSettings.on(torch.device("cpu")).augment is False


@pytest.mark.integration
def test_persistent_workers_give_the_batches_of_a_plain_loader() -> None:
    """Three epochs through make_loader with 2 persistent workers, and with none, and through a
    plain DataLoader (workers restarted every epoch, the loader of before): the same batches."""
    part = _part(40)

    def batches(loader: DataLoader) -> list[list[int]]:
        return [[*y.tolist(), int(x.sum())] for _ in range(3) for x, y in loader]

    g = torch.Generator()
    g.manual_seed(5)
    plain = DataLoader(CachedDataset(part), batch_size=8, shuffle=True, drop_last=True, generator=g)
    expected = batches(plain)
    assert batches(make_loader(part, 1, 8, True, 2, 5)) == expected
    assert batches(make_loader(part, 1, 8, True, 0, 5)) == expected
