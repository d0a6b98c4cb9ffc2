"""Flower's FedAvg plus the bookkeeping this study needs: which sites built each round,
the sites' evaluation of the global model they received, and a loud failure when fewer
than the minimum of sites reply (Flower's FedAvg alone carries on with the old weights)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from shared.config.run import RunSettings
from shared.errors import FederationError
from shared.events import EventLog
from shared.ml.wire import config_in, config_value, metrics_in

log = logging.getLogger(__name__)
EVAL_KEYS = ("loss", "accuracy", "auc", "sensitivity", "specificity")


def site_of(reply: Message) -> str:
    return config_value(config_in(reply.content, "meta"), "site", str)


def check_replies(
    replies: Iterable[Message], run: RunSettings, stage: str, events: EventLog, rnd: int
) -> list[Message]:
    """The good replies in site order; errors recorded; fail loudly below the minimum."""
    good, errors = [], []
    for reply in replies:
        if reply.has_error():
            errors.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            continue
        good.append(reply)
    sites = [site_of(r) for r in good]
    if len(set(sites)) != len(sites):
        raise FederationError(f"{run.arch} {stage} round {rnd}: two SuperNodes claim one site: {sites}")
    for e in errors:
        log.error("%s %s round %d: %s", run.arch, stage, rnd, e)
        events.write("site-error", arch=run.arch, stage=stage, round=rnd, reason=e)
    if len(good) < run.federation.min_sites:
        raise FederationError(
            f"{run.arch} {stage} round {rnd}: {len(good)} of the required {run.federation.min_sites} sites "
            f"replied ({', '.join(sorted(sites)) or 'none'}). " + " | ".join(errors) + _hint(errors)
        )
    return sorted(good, key=site_of)


UNSIGNED_HINT = (
    " (the sites run only apps signed with the operator's key: submit with `fedattack deploy "
    "submit --signed-app` to the SuperLink started with --app, which serves the signed app)"
)


def _hint(errors: list[str]) -> str:
    """What to do about the errors Flower's SuperNodes reply with, where it is known."""
    return UNSIGNED_HINT if any("could not be verified" in e for e in errors) else ""


def global_evaluation(replies: list[Message]) -> dict[str, float]:
    """The received global model's validation metrics, weighted by each site's val size."""
    out: dict[str, float] = {}
    rows = [metrics_in(r.content) for r in replies]
    total = sum(m["val-examples"] for m in rows)
    for key in EVAL_KEYS:
        vals = [(m[f"global-val-{key}"], m["val-examples"]) for m in rows]
        vals = [(v, w) for v, w in vals if not math.isnan(v)]
        if vals:
            out[f"val-{key}"] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
    out["val-examples"] = float(total)
    return out


def log_site_replies(
    events: EventLog, run: RunSettings, replies: list[Message], rnd: int, event: str
) -> None:
    """Per site: the evaluation of the global model it received (round rnd - 1) and its
    training result (round rnd)."""
    for r in replies:
        m = metrics_in(r.content)
        site = site_of(r)
        events.write(
            "site-evaluate",
            arch=run.arch,
            round=rnd - 1,
            site=site,
            **{f"val-{k}": m[f"global-val-{k}"] for k in EVAL_KEYS},
        )
        events.write(event, arch=run.arch, round=rnd, site=site, **m)


class SiteAware(FedAvg):
    """Flower's FedAvg (or a subclass of it), unchanged in its maths. It also records each
    site's reply and the evaluation of the previous global model, and fails the run when
    fewer than `min_sites` sites reply."""

    def __init__(self, run: RunSettings, events: EventLog, offset: int, **kwargs: Any) -> None:
        n = run.federation.min_sites
        super().__init__(
            fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n, **kwargs
        )
        self.run, self.events, self.offset = run, events, offset
        self.contributors: dict[int, list[str]] = {}
        self.evaluation: dict[int, dict[str, float]] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # FedAvg's return type
        rnd = server_round + self.offset
        good = check_replies(replies, self.run, "train", self.events, rnd)
        self.contributors[rnd] = [site_of(r) for r in good]
        self.evaluation[rnd - 1] = global_evaluation(good)
        log_site_replies(self.events, self.run, good, rnd, "site-train")
        return super().aggregate_train(server_round, good)


class SiteAwareFedAvg(SiteAware, FedAvg):
    """FedAvg (McMahan et al., 2017)."""


class SiteAwareFedProx(SiteAware, FedProx):
    """Flower's FedProx: FedAvg on the server, and "proximal-mu" in every training message,
    which the sites add to their loss as (mu / 2) * ||w - w_global||^2 (shared.ml.adversarial)."""


class FedBN(SiteAware, FedAvg):
    """FedBN (Li et al., 2021): BatchNorm stays local. Every training message asks the sites
    to put their own BatchNorm tensors (affine parameters and statistics, kept in Flower's
    per-run node state) in place of the received ones, so only the other tensors are
    shared: the aggregate of those is FedAvg's weighted mean, exactly. The server still
    averages the BatchNorm entries it receives, only to store a global model that can be
    evaluated and attacked; no site ever loads them. Flower ships no FedBN strategy."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["personal-bn"] = True
        return super().configure_train(server_round, arrays, config, grid)


def make_strategy(run: RunSettings, events: EventLog, offset: int) -> SiteAware:
    """The configured strategy (federation.strategy)."""
    if run.federation.strategy == "fedprox":
        return SiteAwareFedProx(run, events, offset, proximal_mu=run.federation.proximal_mu)
    if run.federation.strategy == "fedbn":
        return FedBN(run, events, offset)
    return SiteAwareFedAvg(run, events, offset)
