"""What the server accepts from a site, before any aggregation (or any stored local).

Every training reply (a FedAvg round's, the fine-tune step's) is screened:

1. its weights are exactly what the global's are on the wire: one float32 vector under
   `flat` (shared.ml.wire) as long as the global's, every entry finite; no other array
   in a FedAvg round's reply, and in the fine-tune step's only the re-estimated BatchNorm
   statistics (as many as the model has) and the margin counts, all finite; one metrics
   record holding the site's evaluation of the global it received, `num-examples`
   (FedAvg's weight) a finite number above 0 and `val-examples` finite and not negative,
   and in a FedAvg round the same metric names as most sites send (Flower's strategies
   refuse to aggregate replies that disagree);
2. its update, the reply's weights minus the global the server sent, is not too large:
   per group of tensors, its L2 norm is at most `federation.update_norm_multiple` times
   the round's *lower median* of the norms of the replies that passed step 1 (the middle
   norm of an odd count, the lower of the two middle ones of an even count).

The groups: the floating-point tensors, BatchNorm counters left out (they count batches,
not weights); under FedBN the BatchNorm tensors are a group of their own, since a site
sends its own BatchNorm there (its distance to the averaged one is not an update).

What the median rule does with few sites: with 3 or more replies the reference is an
honest site's norm as long as fewer than half of the replies are bad, so one site cannot
move it; with 2 it is the smaller of the two, so the larger is rejected when it exceeds
the multiple (a site that sends a tiny update can get an honest one rejected: the run
then fails for `min_sites`, loudly); with 1 the rule accepts. A rejected reply counts as
a missing site. The rule bounds a site's pull on the aggregate; it does not tell a subtle
poisoning (an update of honest size in a harmful direction) from an honest one: the
robust strategies (fedmedian, fedtrimmedavg, krum) are for that.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from shared.ml.batchnorm import personal_keys, statistics
from shared.ml.calibration import MARGINS
from shared.ml.wire import FLAT_KEY

log = logging.getLogger(__name__)
EVAL_KEYS = ("loss", "accuracy", "auc", "sensitivity", "specificity")  # a site's evaluation of the global
WEIGHTS = "arrays"
RECEIVED_BN = "received-bn"


@dataclass(frozen=True)
class Layout:
    """The packed vector of one architecture: its length, the groups whose update norms
    are judged apart (name -> boolean mask over the vector), and how many BatchNorm
    statistics a site re-estimates."""

    size: int
    groups: dict[str, np.ndarray]
    bn_size: int


def layout(model: torch.nn.Module, fedbn: bool) -> Layout:
    """The layout of `model`'s packed state (sorted key order, as shared.ml.wire packs)."""
    state = model.state_dict()
    own = set(personal_keys(model)) if fedbn else set()
    size = sum(v.numel() for v in state.values())
    masks = {"weights": np.zeros(size, bool), "batchnorm": np.zeros(size, bool)}
    i = 0
    for k in sorted(state):
        n = state[k].numel()
        if state[k].dtype.is_floating_point:
            masks["batchnorm" if k in own else "weights"][i : i + n] = True
        i += n
    groups = {g: m for g, m in masks.items() if m.any()}
    return Layout(size, groups, sum(v.numel() for v in statistics(model).values()))


def flat_of(record: ArrayRecord) -> np.ndarray:
    """The packed vector of a record the server built (the global it sends)."""
    return np.asarray(record[FLAT_KEY].numpy())


def _array(arr: Array) -> np.ndarray | None:
    try:
        return np.asarray(arr.numpy())
    except Exception:  # whatever bytes a site sent: Flower's deserializer raises its own errors
        return None


def _nonfinite(x: np.ndarray, what: str) -> str | None:
    if not np.issubdtype(x.dtype, np.number):
        return f"{what} are {x.dtype}, not numbers"
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    nan = int(np.isnan(x).sum())
    return f"{what} hold {nan} NaN and {int(bad.sum()) - nan} infinite values of {x.size:,}"


def weights_problem(content: RecordDict, lay: Layout) -> tuple[np.ndarray | None, str | None]:
    """The reply's packed weights, or why they cannot be the global's kind of weights."""
    record = content.get(WEIGHTS)
    if not isinstance(record, ArrayRecord):
        return None, f"no weights under {WEIGHTS!r}"
    if list(record) != [FLAT_KEY]:
        keys = [k[:40] for k in sorted(record)[:5]]
        return None, f"weights under the keys {keys}, the global's are [{FLAT_KEY!r}]"
    x = _array(record[FLAT_KEY])
    if x is None:
        return None, "weights that cannot be read as an array"
    if x.dtype != np.float32 or x.shape != (lay.size,):
        return None, f"weights of shape {x.shape} and dtype {x.dtype}, the global's are ({lay.size},) float32"
    return x, _nonfinite(x, "weights")


def extras_problem(content: RecordDict, lay: Layout, finetune: bool) -> str | None:
    """Why the other arrays of a reply are unusable: a FedAvg round's reply carries none
    (Flower's strategies take exactly one); the fine-tune step's may carry re-estimated
    statistics and margin counts."""
    for key, record in content.array_records.items():
        if key == WEIGHTS:
            continue
        if not finetune or key not in (RECEIVED_BN, MARGINS):
            return f"an unexpected array record {key[:40]!r}"
        for name, arr in record.items():
            x = _array(arr)
            if x is None:
                return f"{key}: {name[:40]!r} cannot be read as an array"
            if key == RECEIVED_BN and x.size != lay.bn_size:
                return f"{key}: {x.size} BatchNorm statistics, the model has {lay.bn_size}"
            problem = _nonfinite(x, f"{key}: {name[:40]}")
            if problem:
                return problem
    return None


def metrics_problem(content: RecordDict) -> str | None:
    """Why the metrics the server weighs replies with are unusable."""
    record = content.get("metrics")
    if not isinstance(record, MetricRecord) or len(content.metric_records) != 1:
        return "not exactly one metrics record, under 'metrics'"
    listed = next((k for k, v in record.items() if not isinstance(v, (int, float))), None)
    if listed is not None:
        return f"metric {listed[:40]!r} is not a number"
    missing = [k for k in (f"global-val-{k}" for k in EVAL_KEYS) if k not in record]
    if missing:
        return f"no metric {missing[0]!r}"
    for key, positive in (("num-examples", True), ("val-examples", False)):
        v = record.get(key)
        if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 or (positive and v == 0):
            bound = "> 0" if positive else ">= 0"
            return f"metric {key!r} is {str(v)[:40]}; it must be a finite number {bound}"
    return None


def update_norms(x: np.ndarray, sent: np.ndarray, lay: Layout, chunk: int = 1 << 20) -> dict[str, float]:
    """Per group: the L2 norm of the update (reply minus global sent), summed in float64
    a chunk at a time (the ServerApp holds every reply already)."""
    squares = dict.fromkeys(lay.groups, 0.0)
    for i in range(0, lay.size, chunk):
        d = x[i : i + chunk].astype(np.float64) - sent[i : i + chunk]
        for g, m in lay.groups.items():
            part = d[m[i : i + chunk]]
            squares[g] += float(np.dot(part, part))
    return {g: math.sqrt(v) for g, v in squares.items()}


def odd_metrics(replies: dict[str, RecordDict]) -> dict[str, str]:
    """Site -> why, for each reply whose metric names differ from those most replies send
    (Flower's strategies refuse to aggregate a round whose replies disagree)."""
    names = {site: tuple(sorted(c["metrics"].keys())) for site, c in replies.items()}
    usual = Counter(names.values()).most_common(1)[0][0] if names else ()
    return {
        site: f"metrics named {[k[:40] for k in sorted(set(n) ^ set(usual))][:5]} unlike the other sites'"
        for site, n in names.items()
        if n != usual
    }


def lower_median(values: list[float]) -> float:
    """The middle value; of an even count, the lower of the two middle ones."""
    return sorted(values)[(len(values) - 1) // 2]


def oversized(norms: dict[str, dict[str, float]], multiple: float) -> dict[str, str]:
    """Site -> why, for each update whose norm in some group exceeds `multiple` times the
    group's lower median over all `norms` (site -> group -> norm)."""
    out: dict[str, str] = {}
    groups = sorted({g for n in norms.values() for g in n})
    for g in groups:
        ref = lower_median([n[g] for n in norms.values()])
        for site, n in norms.items():
            if n[g] > multiple * ref and site not in out:
                out[site] = (
                    f"update norm {n[g]:.4g} ({g}) exceeds {multiple:g} x the round's median {ref:.4g} "
                    "(federation.update_norm_multiple)"
                )
    return out


@dataclass(frozen=True)
class Screen:
    """The screening of one architecture's replies (see the module's docstring)."""

    layout: Layout
    multiple: float

    def rejections(
        self, replies: dict[str, RecordDict], sent: np.ndarray, finetune: bool = False
    ) -> dict[str, str]:
        """Site -> why its reply is rejected, for the replies (site -> content) to the
        global `sent` (a FedAvg round's, or the fine-tune step's); the others are accepted."""
        out: dict[str, str] = {}
        weights: dict[str, np.ndarray] = {}
        for site, content in replies.items():
            x, problem = weights_problem(content, self.layout)
            problem = problem or extras_problem(content, self.layout, finetune) or metrics_problem(content)
            if problem or x is None:
                out[site] = problem or "no weights"
            else:
                weights[site] = x
        if not finetune:  # the fine-tune step's calibration records differ by site
            out |= odd_metrics({s: replies[s] for s in weights})
        norms = {s: update_norms(x, sent, self.layout) for s, x in weights.items() if s not in out}
        log.info("update norms: %s", {s: {g: round(v, 6) for g, v in n.items()} for s, n in norms.items()})
        return out | oversized(norms, self.multiple)
