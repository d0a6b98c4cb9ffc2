"""Flower's strategies plus the bookkeeping this study needs: which sites built each
round, the sites' evaluation of the global model they received, every reply screened
before it is aggregated (server.validation), and a loud failure when fewer than the
minimum of sites reply acceptably (Flower's strategies alone carry on with the old weights)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from server.validation import EVAL_KEYS, Screen, flat_of
from shared.config.run import RunSettings
from shared.errors import FederationError
from shared.events import EventLog
from shared.ml.wire import FLAT_KEY, config_in, config_value, metrics_in

log = logging.getLogger(__name__)


def site_of(reply: Message) -> str:
    return config_value(config_in(reply.content, "meta"), "site", str)


def _named(reply: Message, run: RunSettings) -> tuple[str, str | None]:
    """The site a reply names, and why it is refused before its weights are looked at: no
    site name, or one that is not a configured site (a name also becomes a file name)."""
    try:
        site = site_of(reply)
    except FederationError as e:
        return f"node {reply.metadata.src_node_id}", f"its reply names no site ({e})"
    if site not in run.sites:
        return f"node {reply.metadata.src_node_id}", f"site {site[:40]!r} is not one of {list(run.sites)}"
    return site, None


def check_replies(
    replies: Iterable[Message],
    run: RunSettings,
    stage: str,
    events: EventLog,
    rnd: int,
    screen: Screen,
    sent: np.ndarray,
) -> list[Message]:
    """The accepted replies to the global `sent`, in site order; errors and rejected replies
    (server.validation) logged and recorded; fail loudly below the minimum of sites."""
    good, errors, refused = [], [], {}
    for reply in replies:
        if reply.has_error():
            errors.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            continue
        site, why = _named(reply, run)
        if why:
            refused[site] = why
        else:
            good.append((site, reply))
    sites = [s for s, _ in good]
    if len(set(sites)) != len(sites):
        raise FederationError(f"{run.arch} {stage} round {rnd}: two SuperNodes claim one site: {sites}")
    refused |= screen.rejections({s: r.content for s, r in good}, sent, finetune=stage == "finetune")
    for e in errors:
        log.error("%s %s round %d: %s", run.arch, stage, rnd, e)
        events.write("site-error", arch=run.arch, stage=stage, round=rnd, reason=e)
    for site, why in refused.items():
        log.error("%s %s round %d: site %s: reply rejected: %s", run.arch, stage, rnd, site, why)
        events.write("site-rejected", arch=run.arch, stage=stage, round=rnd, site=site, reason=why)
    accepted = sorted(((s, r) for s, r in good if s not in refused), key=lambda p: p[0])
    if len(accepted) < run.federation.min_sites:
        problems = errors + [f"site {s}: reply rejected: {why}" for s, why in refused.items()]
        raise FederationError(
            f"{run.arch} {stage} round {rnd}: {len(accepted)} of the required {run.federation.min_sites} "
            f"sites replied ({', '.join(s for s, _ in accepted) or 'none'}). "
            + " | ".join(problems)
            + _hint(errors)
        )
    return [r for _, r in accepted]


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
    """One of Flower's strategies (FedAvg or a subclass of it), unchanged in its maths. It
    also screens every reply against the global it sent (server.validation), records each
    accepted site's reply and the evaluation of the previous global model, fails the run
    when fewer than `min_sites` sites reply acceptably, and refuses an aggregate that is
    not finite (before anything stores it)."""

    def __init__(
        self, run: RunSettings, events: EventLog, offset: int, screen: Screen, **kwargs: Any
    ) -> None:
        n = run.federation.min_sites
        super().__init__(
            fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n, **kwargs
        )
        self.run, self.events, self.offset, self.screen = run, events, offset, screen
        self.sent: np.ndarray | None = None  # the global of the round in progress, packed
        self.contributors: dict[int, list[str]] = {}
        self.evaluation: dict[int, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.sent = flat_of(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.offset
        if self.sent is None:
            raise FederationError(f"{self.run.arch} round {rnd}: replies before any global was sent")
        good = check_replies(replies, self.run, "train", self.events, rnd, self.screen, self.sent)
        self.contributors[rnd] = [site_of(r) for r in good]
        self.evaluation[rnd - 1] = global_evaluation(good)
        log_site_replies(self.events, self.run, good, rnd, "site-train")
        arrays, metrics = super().aggregate_train(server_round, good)
        return self.finite_global(arrays, rnd), metrics

    def finite_global(self, arrays: ArrayRecord | None, rnd: int) -> ArrayRecord:
        """The aggregate as the float32 vector that is stored and sent on; a run whose
        aggregate is missing or not finite stops here, with the reason."""
        where = f"{self.run.arch} round {rnd} ({self.run.federation.strategy} of sites "
        where += f"{', '.join(self.contributors[rnd])})"
        if arrays is None or FLAT_KEY not in arrays:
            raise FederationError(f"{where}: the strategy returned no model; the run stops")
        x = np.asarray(arrays[FLAT_KEY].numpy(), dtype=np.float32)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise FederationError(
                f"{where}: the aggregated global holds {bad:,} NaN or infinite weights of {x.size:,}; "
                "it is not stored and the run stops"
            )
        return ArrayRecord({FLAT_KEY: Array(x)})


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


class SiteAwareFedMedian(SiteAware, FedMedian):
    """Flower's FedMedian (Yin et al., 2018): the coordinate-wise median of the accepted
    replies, unweighted."""


class SiteAwareFedTrimmedAvg(SiteAware, FedTrimmedAvg):
    """Flower's FedTrimmedAvg (Yin et al., 2018): per coordinate, the unweighted mean after
    cutting floor(beta * n) replies off each end."""


class SiteAwareKrum(SiteAware, Krum):
    """Flower's Krum (Blanchard et al., 2017): the one accepted reply whose summed squared
    distance to its n - f - 2 nearest replies is smallest becomes the global."""


def make_strategy(run: RunSettings, events: EventLog, offset: int, screen: Screen) -> SiteAware:
    """The configured strategy (federation.strategy) with its parameters."""
    fed = run.federation
    if fed.strategy == "fedprox":
        return SiteAwareFedProx(run, events, offset, screen, proximal_mu=fed.proximal_mu)
    if fed.strategy == "fedbn":
        return FedBN(run, events, offset, screen)
    if fed.strategy == "fedmedian":
        return SiteAwareFedMedian(run, events, offset, screen)
    if fed.strategy == "fedtrimmedavg":
        return SiteAwareFedTrimmedAvg(run, events, offset, screen, beta=fed.trim_beta)
    if fed.strategy == "krum":
        return SiteAwareKrum(run, events, offset, screen, num_malicious_nodes=fed.malicious_sites)
    return SiteAwareFedAvg(run, events, offset, screen)
