"""How good each model is before anything attacks it: AUC, sensitivity and specificity on
the held-out test sets (every image, both labels), at the decision rule the attack uses
(argmax), each with its 95% interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attack.measure.core import Settings, batches, on_device
from attack.stats import Interval, auc_delong, wilson
from shared.ml.training import margin


@dataclass(frozen=True)
class TestSet:
    """Every image of the held-out test sets, in [0, 1], with its label."""

    images: torch.Tensor  # float32 [N, C, S, S]
    labels: torch.Tensor  # int64 [N], 1 = pneumonia
    ids: tuple[str, ...]


@dataclass(frozen=True)
class CleanPerformance:
    n_positive: int
    n_negative: int
    auc: Interval
    sensitivity: Interval
    specificity: Interval


@torch.inference_mode()
def scores(model: nn.Module, images: torch.Tensor, s: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(pneumonia score, argmax is pneumonia) for every image, float32 unless bfloat16 was
    chosen; the score is the logit margin (shared.ml.training.margin), which never saturates."""
    model = on_device(model, s.device)
    prob, pred = [], []
    low = s.dtype != torch.float32
    for sl in batches(len(images), s.batch):
        with torch.autocast(s.device.type, dtype=s.dtype, enabled=low):
            logits = model(images[sl].to(s.device)).float()
        prob.append(torch.from_numpy(margin(logits.cpu().numpy())))
        pred.append((logits.argmax(1) == 1).cpu())
    return torch.cat(prob).numpy(), torch.cat(pred).numpy()


def clean_performance(model: nn.Module, test: TestSet, s: Settings) -> CleanPerformance:
    prob, pred = scores(model, test.images, s)
    labels = test.labels.numpy()
    pos, neg = labels == 1, labels == 0
    return CleanPerformance(
        n_positive=int(pos.sum()),
        n_negative=int(neg.sum()),
        auc=auc_delong(prob, labels),
        sensitivity=wilson(int(pred[pos].sum()), int(pos.sum())),
        specificity=wilson(int((~pred[neg]).sum()), int(neg.sum())),
    )
