"""The decision threshold, calibrated on validation data and folded into the model.

A model trained on a few dozen images per site can rank well (validation AUC 0.8) and still
call almost everything negative at the argmax rule: InceptionV3 locals of the demo reached
a validation sensitivity of 0.41-0.48 at specificity 0.88-0.96. Every consumer of a stored
model (the attack's "correctly classified", the clean test figures, the independent
recomputation) predicts by argmax, so the calibrated rule is stored *in the model*:

- the threshold is a cut `t` on the logit margin m = z_pneumonia - z_none (pneumonia when
  m > t), chosen on
  validation data to maximise Youden's J (sensitivity + specificity - 1), ties broken
  towards the smallest |t| (the rule moves no further than the data asks);
- subtracting `t` from the head's pneumonia bias makes argmax predict pneumonia exactly
  when m > t, so nothing downstream changes. A constant shift of one logit leaves the sign
  of the cross-entropy's input gradient unchanged (for two classes it is
  -(1 - p_y) * grad(z_y - z_other)), so FGSM and PGD images are the same as without it
  (up to float rounding of gradient elements within rounding error of zero).

Margins are counted in a fixed histogram (`BINS` bins of `STEP` over [-LIMIT, LIMIT],
outer bins open-ended): a site sends the server only these per-class counts of its
validation margins for the global model, never an image's score; the server sums them and
cuts the global's threshold on all sites' validation data at once. Cuts sit on bin edges,
so sensitivity and specificity computed from the counts are exact. A validation part with
one class places no threshold: that model keeps argmax (recorded as val-calibrated 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError

LIMIT, STEP = 16.0, 0.05
BINS = round(2 * LIMIT / STEP)  # 640
EDGES = np.linspace(-LIMIT, LIMIT, BINS + 1)  # cut candidates; EDGES[BINS // 2] == 0
MARGINS = "global-val-margins"  # fine-tune reply: a site's counts for the received global
# the record of a model that keeps argmax (no threshold could be placed for it)
UNCALIBRATED = {"val-threshold": 0.0, "val-calibrated": 0.0}


def margins(logits: np.ndarray) -> np.ndarray:
    """m = z_pneumonia - z_none per image (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    return z[:, 1] - z[:, 0]


def histogram(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class counts of the margins, shape [2, BINS] (row 0: no pneumonia, row 1:
    pneumonia); bin i holds EDGES[i] < m <= EDGES[i+1], the outer bins everything beyond."""
    m = margins(logits)
    # compared with EDGES themselves, so "m > EDGES[k]" and "bin >= k" always agree: the
    # folded model's argmax calls a margin equal to the cut "no pneumonia", and so do we
    idx = np.clip(np.searchsorted(EDGES, m, side="left") - 1, 0, BINS - 1)
    counts = np.zeros((2, BINS), dtype=np.int64)
    for c in (0, 1):
        counts[c] = np.bincount(idx[np.asarray(labels) == c], minlength=BINS)
    return counts


@dataclass(frozen=True)
class Cut:
    """A calibrated threshold on the margin and the validation figures at it and at argmax
    (threshold 0), all exact from the counts."""

    threshold: float
    sensitivity: float
    specificity: float
    accuracy: float
    argmax_sensitivity: float
    argmax_specificity: float
    n: int

    def as_metrics(self, prefix: str = "val-") -> dict[str, float]:
        return {
            f"{prefix}threshold": self.threshold,
            f"{prefix}sensitivity": self.sensitivity,
            f"{prefix}specificity": self.specificity,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}sensitivity-argmax": self.argmax_sensitivity,
            f"{prefix}specificity-argmax": self.argmax_specificity,
        }


def youden_cut(counts: np.ndarray) -> Cut:
    """The cut on EDGES[1:-1] (predict pneumonia when m > cut) with the largest
    sensitivity + specificity; ties go to the cut nearest 0. Needs both classes."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (2, BINS):
        raise ValueError(f"calibration: counts must have shape (2, {BINS}), got {counts.shape}")
    neg, pos = counts[0], counts[1]
    n_neg, n_pos = int(neg.sum()), int(pos.sum())
    if n_neg == 0 or n_pos == 0:
        raise ValueError("calibration: the validation data need both classes")
    # predicted positive at cut EDGES[k]: every bin i >= k
    tp = np.cumsum(pos[::-1])[::-1]  # tp[k] = positives in bins k..end
    tn = np.concatenate([[0], np.cumsum(neg)])[:-1]  # tn[k] = negatives in bins 0..k-1
    sens, spec = tp / n_pos, tn / n_neg
    k = np.arange(1, BINS)  # inner edges only: the outer bins are open-ended
    j = sens[k] + spec[k]
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0, atol=1e-12))
    pick = int(k[best[np.argmin(np.abs(EDGES[k[best]]))]])
    zero = BINS // 2
    return Cut(
        threshold=float(EDGES[pick]),
        sensitivity=float(sens[pick]),
        specificity=float(spec[pick]),
        accuracy=float((tp[pick] + tn[pick]) / (n_neg + n_pos)),
        argmax_sensitivity=float(sens[zero]),
        argmax_specificity=float(spec[zero]),
        n=n_neg + n_pos,
    )


def head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The 2-class linear head of a Classifier (timm's get_classifier) and its state-dict
    prefix."""
    net = getattr(model, "net", model)
    get = getattr(net, "get_classifier", None)
    fc = get() if callable(get) else None
    if not isinstance(fc, nn.Linear) or fc.bias is None or fc.out_features != 2:
        raise ConfigError(
            f"training.calibration: {type(net).__name__} has no 2-class linear head with a bias; "
            "set training.calibration: none for this architecture"
        )
    name = next(n for n, m in model.named_modules() if m is fc)
    return name, fc


def bias_key(model: nn.Module) -> str:
    """The state-dict key of the head's bias."""
    return f"{head(model)[0]}.bias"


def shift_state(state: dict[str, torch.Tensor], key: str, threshold: float) -> dict[str, torch.Tensor]:
    """A copy of `state` whose head predicts pneumonia (by argmax) exactly when the margin
    of the original exceeds `threshold`."""
    bias = state[key].clone()
    bias[1] -= threshold
    return {**state, key: bias}


@torch.no_grad()
def shift_model(model: nn.Module, threshold: float) -> None:
    """In place: the model's argmax now cuts its original margin at `threshold`."""
    _, fc = head(model)
    assert fc.bias is not None
    fc.bias[1] -= threshold


def fold_threshold(model: nn.Module, logits: np.ndarray, labels: np.ndarray) -> tuple[Cut, np.ndarray]:
    """Cut `model`'s threshold on its validation `logits` (both classes needed) and fold
    it into its head; the cut, and the logits (float32) of the model as it now is."""
    cut = youden_cut(histogram(logits, labels))
    shift_model(model, cut.threshold)
    shifted = logits.astype(np.float32, copy=True)
    shifted[:, 1] -= np.float32(cut.threshold)
    return cut, shifted
