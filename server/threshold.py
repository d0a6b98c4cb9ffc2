"""The stored global's decision threshold (training.calibration: youden): cut on the
per-class counts of validation margins the sites sent in their fine-tune replies
(shared.ml.calibration), checked and summed, and folded into the head."""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import Message, RecordDict

from server.strategy import site_of
from shared.errors import FederationError
from shared.ml.calibration import BINS, MARGINS, UNCALIBRATED, shift_state, youden_cut
from shared.ml.wire import arrays_in, metrics_in

log = logging.getLogger(__name__)


def calibrated_global(
    state: dict[str, torch.Tensor],
    evaluation: dict[str, float],
    replies: list[Message],
    arch: str,
    bias_key: str,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The global with its decision threshold cut on all sites' validation margins and
    folded into its head; its validation figures at that threshold (exact from the counts).
    AUC is unchanged by the fold; val-loss stays the one the sites measured before it (the
    fold changes the loss, and only the sites could recompute it). The sites measured the
    global with BatchNorm statistics re-estimated on their own data; the stored global
    carries their exact pool, so the cut fits it closely but not exactly."""
    counts = np.zeros((2, BINS), dtype=np.int64)
    for r in replies:
        counts += margin_counts(r.content, site_of(r))
    if (counts.sum(axis=1) == 0).any():
        log.warning(
            "%s: the sites' validation parts hold one class only: the global keeps the "
            "argmax rule (raise data.split.val_fraction to calibrate it)",
            arch,
        )
        return state, {**evaluation, **UNCALIBRATED}
    cut = youden_cut(counts)
    log.info(
        "%s: global threshold %.2f on %d validation images: sensitivity %.2f -> %.2f, "
        "specificity %.2f -> %.2f",
        arch,
        cut.threshold,
        cut.n,
        cut.argmax_sensitivity,
        cut.sensitivity,
        cut.argmax_specificity,
        cut.specificity,
    )
    shifted = shift_state(state, bias_key, cut.threshold)
    return shifted, {**evaluation, **cut.as_metrics("val-"), "val-calibrated": 1.0}


def margin_counts(content: RecordDict, site: str) -> np.ndarray:
    """A site's counts, checked: integers >= 0 that add up to the validation images it
    reports (a site cannot outweigh the others by inflating its counts)."""
    where = f"fine-tune reply from site {site}"
    record = arrays_in(content, MARGINS)
    if "counts" not in record:
        raise FederationError(f"{where}: no margin counts")
    counts = record["counts"].numpy()
    n_val = metrics_in(content).get("val-examples", -1.0)
    if (
        counts.shape != (2, BINS)
        or counts.dtype.kind not in "iu"
        or (counts < 0).any()
        or float(counts.sum()) != n_val
    ):
        raise FederationError(
            f"{where}: margin counts must be (2, {BINS}) integers >= 0 adding up to its "
            f"{n_val:g} validation images; got {counts.dtype} {counts.shape} summing to {counts.sum()}"
        )
    return counts.astype(np.int64)
