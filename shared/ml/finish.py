"""Finishing a trained model into what is stored: BatchNorm statistics, threshold fold.

One recipe for the sites' fine-tuned locals (clients.site) and the outsider's surrogates
(attack.measure.outsider), so that "correctly classified" means the same for both:

1. (`batchnorm` given) the BatchNorm statistics re-estimated for the final weights on
   those images (shared.ml.batchnorm.recalibrate). The outsider's surrogates, trained from
   random init, need it; a site's locals keep the statistics their short fine-tuning
   ran with, which started from the received model's re-estimated ones;
2. the model's logits on the validation images;
3. (`calibrate`, and both classes among the validation labels) the decision threshold cut
   on those logits and folded into the head (shared.ml.calibration.fold_threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from shared.ml.batchnorm import recalibrate
from shared.ml.calibration import Cut, fold_threshold
from shared.ml.training import EvalResult, metrics_from_logits, predict


@dataclass(frozen=True)
class Finished:
    """The validation logits of the model as it now is (threshold folded), their labels,
    and the cut that was folded (None: the model keeps argmax)."""

    logits: np.ndarray
    labels: np.ndarray
    cut: Cut | None

    @property
    def metrics(self) -> EvalResult:
        return metrics_from_logits(self.logits, self.labels)


def finish(
    model: nn.Module,
    val: DataLoader,
    device: torch.device,
    *,
    calibrate: bool,
    batchnorm: DataLoader | None = None,
) -> Finished:
    """Finish `model` in place (see the module's docstring); it is left in eval mode."""
    if batchnorm is not None:
        recalibrate(model, batchnorm, device)
    logits, labels = predict(model, val, device)
    if not calibrate or len(np.unique(labels)) < 2:
        return Finished(logits, labels, None)
    cut, shifted = fold_threshold(model, logits, labels)
    return Finished(shifted, labels, cut)
