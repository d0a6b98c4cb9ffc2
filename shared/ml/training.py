"""Local training and evaluation of one model on one site's cached data.

Uses CUDA with AMP and channels_last when present, the CPU otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from shared.config.training import AdversarialTraining, OptimizerConfig
from shared.ml.adversarial import Proximal, mix

log = logging.getLogger(__name__)


def pick_device(requested: str = "") -> torch.device:
    """`requested` ('cpu', 'cuda', 'cuda:1') or the best available device."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare(model: nn.Module, device: torch.device, training: bool = False) -> nn.Module:
    """Move to device; channels_last on CUDA, and on the CPU for a model about to be
    trained: there a training step is 6% (ResNet50), 15% (DenseNet121) and 21%
    (InceptionV3 at 107 px) faster, batch 16, one thread. Models whose predictions decide
    an attack's counts stay in the default layout on the CPU, the layout the independent
    recomputation (tests/recompute.py) uses, so it reproduces them bit for bit."""
    model = model.to(device)
    if device.type == "cuda" or training:
        model = model.to(memory_format=torch.channels_last)
    return model


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def make_optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float | None = None):
    """The configured optimizer over the model's parameters."""
    lr = cfg.lr if lr is None else lr
    if cfg.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)


def restart_batchnorm_statistics(model: nn.Module) -> None:
    """Re-estimate BatchNorm running statistics from scratch during the coming training,
    as a cumulative average over its batches (momentum None).

    With the default exponential average (momentum 0.1) a short local run keeps a large
    share of the statistics it received; from a random init those are far off (InceptionV3's
    eval-mode logits reach 1e6), and FedAvg keeps averaging stale statistics for rounds.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
CROP_AREA = (0.85, 1.0)  # augment: the share of the image area a random resized crop keeps
ROTATION_DEG = 5.0  # augment: the largest rotation either way


def augment_batch(x: torch.Tensor) -> torch.Tensor:
    """Chest X-ray train-time augmentation, per image, on x's device: a random resized crop
    (CROP_AREA of the area, square, anywhere inside the image) and a rotation within
    +-ROTATION_DEG, by one bilinear resampling (border pixels repeat at the corners)."""
    n = x.shape[0]
    side = torch.empty(n, device=x.device).uniform_(*CROP_AREA).sqrt()
    angle = torch.empty(n, device=x.device).uniform_(-ROTATION_DEG, ROTATION_DEG).deg2rad()
    shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * (1 - side)[:, None]
    cos, sin = angle.cos() * side, angle.sin() * side
    rows = [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class StepSettings:
    """How a training step runs on its device: autocast dtype (None: fp32), loss scaling,
    augmentation."""

    amp: torch.dtype | None = None
    augment: bool = False

    @classmethod
    def on(cls, device: torch.device, precision: str = "bf16", augment: bool = False) -> StepSettings:
        """Mixed precision on CUDA only (the CPU trains in fp32, the reference results)."""
        return cls(AMP.get(precision) if device.type == "cuda" else None, augment)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    class_weights: torch.Tensor | None = None,
    adversarial: AdversarialTraining | None = None,
    proximal: Proximal | None = None,
    step: StepSettings | None = None,
) -> float:
    """Train for `epochs`; return the mean training loss of the last epoch. `class_weights`
    weighs the cross-entropy per class (see `balanced_weights`); `adversarial` replaces a
    share of each batch by adversarial images (shared.ml.adversarial); `proximal` adds
    FedProx's term to the loss; `step` the precision and augmentation (default: bf16 on
    CUDA, no augmentation). The losses add up on the device (float64, as Python's float
    did), so the host waits for the GPU once per epoch, not once per step."""
    model.train()
    step = step or StepSettings.on(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed-size batches: pick the fastest kernels once
    weight = None if class_weights is None else class_weights.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=step.amp == torch.float16)
    mean_loss = math.nan
    for _ in range(epochs):
        total, n = torch.zeros((), dtype=torch.float64, device=device), 0
        for x, y in loader:
            x, y = _to(x, device), y.to(device, non_blocking=True)
            if step.augment:
                x = augment_batch(x)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=step.amp or torch.float32, enabled=step.amp is not None):
                if adversarial is not None:
                    x = mix(model, x, y, adversarial, weight)
                loss = F.cross_entropy(model(x), y, weight=weight)
            if proximal is not None:
                loss = loss + proximal.term(model)
            if scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total += loss.detach().double() * len(y)
            n += len(y)
        mean_loss = float(total) / max(n, 1)
    return mean_loss


def balanced_weights(labels: np.ndarray, classes: int = 2) -> torch.Tensor:
    """Per-class loss weights n / (classes * n_c): both classes count as much in the loss
    whatever their prevalence, so the argmax rule sits where errors on either side cost the
    same (a site with few pneumonia images would otherwise learn to call most images negative)."""
    counts = np.bincount(labels.astype(np.int64), minlength=classes).astype(np.float64)
    counts[counts == 0] = 1.0
    return torch.tensor(len(labels) / (classes * counts), dtype=torch.float32)


@dataclass(frozen=True)
class EvalResult:
    """Validation metrics of a binary classifier (positive class = pneumonia)."""

    loss: float
    accuracy: float
    auc: float
    sensitivity: float
    specificity: float
    n: int

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}auc": self.auc,
            f"{prefix}sensitivity": self.sensitivity,
            f"{prefix}specificity": self.specificity,
        }


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, 2] (float32) and labels [N] over the loader, in order."""
    model.eval()
    logits, labels = [], []
    use_amp = device.type == "cuda"
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(_to(x, device))
        logits.append(out.float().cpu())
        labels.append(y)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> EvalResult:
    """Loss, accuracy, AUC, sensitivity and specificity on the loader's data."""
    logits, labels = predict(model, loader, device)
    return metrics_from_logits(logits, labels)


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray) -> EvalResult:
    """Binary metrics from 2-class logits."""
    t = torch.from_numpy(logits)
    loss = float(F.cross_entropy(t, torch.from_numpy(labels).long()))
    score = margin(logits)
    pred = logits.argmax(axis=1)
    pos, neg = labels == 1, labels == 0
    return EvalResult(
        loss=loss,
        accuracy=float((pred == labels).mean()),
        auc=roc_auc(score, labels),
        sensitivity=float((pred[pos] == 1).mean()) if pos.any() else math.nan,
        specificity=float((pred[neg] == 0).mean()) if neg.any() else math.nan,
        n=len(labels),
    )


def margin(logits: np.ndarray) -> np.ndarray:
    """The pneumonia score a ranking uses: the logit margin (pneumonia minus none), in
    float64. It orders images as the softmax probability does, but never saturates: in
    float32 the probability is exactly 1.0 for every margin above about 17, and such ties
    pull an AUC towards 0.5 (seen on InceptionV3 locals, whose margins reach the hundreds)."""
    z = np.asarray(logits, dtype=np.float64)
    return z[:, 1] - z[:, 0]


def roc_auc(score: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN with one class,
    and NaN when any score is not finite (a broken model must not rank into a plausible AUC)."""
    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0 or not np.isfinite(score).all():
        return math.nan
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
