"""One Flower run = one architecture: FedAvg rounds with a stored global checkpoint per
round, then a fine-tune step whose replies become the sites' local checkpoints.

Federated evaluation is folded into the training messages: each site first validates
the global model it receives, then trains. Round r's global model is therefore
evaluated by the replies of round r+1 (or of the fine-tune step, for the last round),
which saves one full Flower round trip per round.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from server.metrics import MetricsLog, plot_metrics
from shared.errors import FederationError
from shared.models import Classifier, build_model
from shared.packing import from_record, to_record
from shared.runconfig import RunSettings
from shared.store import METRICS_FILE, CheckpointStore, finite_metrics

log = logging.getLogger(__name__)
EVAL_KEYS = ("loss", "accuracy", "auc", "sensitivity", "specificity")


def site_of(reply: Message) -> str:
    return str(reply.content["meta"]["site"])


def check_replies(
    replies: Iterable[Message], run: RunSettings, stage: str, metrics: MetricsLog, rnd: int,
) -> list[Message]:
    """Keep the good replies; record errors; fail loudly below the minimum of sites."""
    good, errors = [], []
    for reply in replies:
        if reply.has_error():
            errors.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            continue
        meta = reply.content["meta"]
        if str(meta["arch"]) != run.arch or int(meta["image-size"]) != run.image_size:
            errors.append(f"site {meta['site']}: runs {meta['arch']} at {meta['image-size']} px, "
                          f"the server {run.arch} at {run.image_size} px")
            continue
        good.append(reply)
    sites = [site_of(r) for r in good]
    if len(set(sites)) != len(sites):
        raise FederationError(f"{run.arch} {stage} round {rnd}: two SuperNodes claim one site: {sites}")
    for e in errors:
        log.error("%s %s round %d: %s", run.arch, stage, rnd, e)
        metrics.write("site-error", arch=run.arch, stage=stage, round=rnd, reason=e)
    if len(good) < run.min_sites:
        raise FederationError(
            f"{run.arch} {stage} round {rnd}: {len(good)} of the required {run.min_sites} sites "
            f"replied ({', '.join(sorted(sites)) or 'none'}). " + " | ".join(errors)
        )
    return good


def global_evaluation(replies: list[Message]) -> dict[str, float]:
    """The received global model's validation metrics, weighted by each site's val size."""
    out: dict[str, float] = {}
    rows = [dict(r.content["metrics"]) for r in replies]
    total = sum(m["val-examples"] for m in rows)
    for key in EVAL_KEYS:
        vals = [(m[f"global-val-{key}"], m["val-examples"]) for m in rows]
        vals = [(v, w) for v, w in vals if not math.isnan(v)]
        if vals:
            out[f"val-{key}"] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
    out["val-examples"] = float(total)
    return out


def log_site_replies(metrics: MetricsLog, run: RunSettings, replies: list[Message], rnd: int,
                     event: str) -> None:
    """Per site: the evaluation of the global model it received (round rnd - 1) and its
    training result (round rnd)."""
    for r in replies:
        m = dict(r.content["metrics"])
        site = site_of(r)
        metrics.write("site-evaluate", arch=run.arch, round=rnd - 1, site=site,
                      **{f"val-{k}": m[f"global-val-{k}"] for k in EVAL_KEYS})
        metrics.write(event, arch=run.arch, round=rnd, site=site, **m)


class SiteAwareFedAvg(FedAvg):
    """Flower's FedAvg, unchanged in its maths. It also records each site's reply and the
    evaluation of the previous global model, and fails the run when fewer than
    `min_sites` sites reply (FedAvg alone would carry on with the old weights)."""

    def __init__(self, run: RunSettings, metrics: MetricsLog, offset: int) -> None:
        n = run.min_sites
        super().__init__(fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=n,
                         min_available_nodes=n)
        self.run, self.metrics, self.offset = run, metrics, offset
        self.contributors: dict[int, list[str]] = {}
        self.evaluation: dict[int, dict[str, float]] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        rnd = server_round + self.offset
        good = check_replies(replies, self.run, "train", self.metrics, rnd)
        self.contributors[rnd] = sorted(site_of(r) for r in good)
        self.evaluation[rnd - 1] = global_evaluation(good)
        log_site_replies(self.metrics, self.run, good, rnd, "site-train")
        return super().aggregate_train(server_round, good)


def typed_state(arrays: ArrayRecord, reference: Classifier) -> dict[str, torch.Tensor]:
    """Packed arrays back to a state dict with the model's dtypes (counters as integers)."""
    return from_record(arrays, reference.state_dict(), f"server ({reference.arch})")


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {n} required SuperNodes connected")
        time.sleep(1.0)


class Federation:
    """The state of one run: store, metrics log, reference model."""

    def __init__(self, grid: Grid, run: RunSettings) -> None:
        self.grid, self.run = grid, run
        self.store = CheckpointStore(run.store)
        self.metrics = MetricsLog(self.store.root / METRICS_FILE)
        torch.manual_seed(run.seed)
        self.reference = build_model(run.arch, run.image_size, run.channels,
                                     run.pretrained or None)  # type: ignore[arg-type]

    def run_all(self) -> None:
        """FedAvg for num_rounds rounds (resuming if asked), then the fine-tune step."""
        run = self.run
        state = {k: v.detach().clone() for k, v in self.reference.state_dict().items()}
        offset = 0
        if not run.resume and run.arch == run.architectures[0]:
            # a fresh study: a complete manifest left from an earlier one must not make a
            # watching attack service start early (the submitter may be on another host)
            self.store.reset()
        if run.resume:
            last = self.store.last_round(run.arch)
            if last is not None:
                state = self.store.load(last["file"], last["sha256"])
                offset = int(last["round"])
                log.info("%s: resuming after stored round %d", run.arch, offset)
        self.metrics.write("run-start", arch=run.arch, rounds=run.num_rounds, resume_from=offset)
        try:
            final = self.fedavg(state, offset)
            self.finetune(final)
        except Exception as e:
            self.metrics.write("run-failed", arch=run.arch, reason=f"{type(e).__name__}: {e}")
            raise
        complete = self.store.mark_complete(list(run.architectures), list(run.sites))
        self.metrics.write("run-done", arch=run.arch, store_complete=complete)
        plot_metrics(self.metrics.path, self.store.root / "metrics.png")

    def save_round(self, rnd: int, state: dict[str, torch.Tensor], sites: list[str]) -> None:
        self.store.save_round(self.run.arch, rnd, state, self.reference.spec, {}, sites,
                              self.run.to_run_config())
        self.metrics.write("round-saved", arch=self.run.arch, round=rnd, sites=sites)

    def record_evaluation(self, rnd: int, evaluation: dict[str, float], sites: list[str]) -> None:
        self.store.update_round_metrics(self.run.arch, rnd, evaluation)
        self.metrics.write("round", arch=self.run.arch, round=rnd, sites=sites, **evaluation)

    def fedavg(self, state: dict[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
        run = self.run
        if offset >= run.num_rounds:
            return state
        strategy = SiteAwareFedAvg(run, self.metrics, offset)
        config = ConfigRecord({"arch": run.arch, "image-size": run.image_size, "phase": "fedavg",
                               "round-offset": offset})

        def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            rnd = server_round + offset
            if server_round == 0:
                if offset == 0:
                    self.save_round(0, typed_state(arrays, self.reference), [])
                return None
            self.save_round(rnd, typed_state(arrays, self.reference), strategy.contributors[rnd])
            self.record_evaluation(rnd - 1, strategy.evaluation[rnd - 1],
                                   strategy.contributors.get(rnd - 1, []))
            return None

        wait_for_nodes(self.grid, run.min_sites, run.round_timeout)
        result = strategy.start(self.grid, to_record(state), num_rounds=run.num_rounds - offset,
                                timeout=run.round_timeout, train_config=config,
                                evaluate_fn=after_round)
        return typed_state(result.arrays, self.reference)

    def finetune(self, state: dict[str, torch.Tensor]) -> None:
        """Each site validates the final global model, then fine-tunes it on its own shard;
        the replies become the local checkpoints."""
        run, rnd = self.run, self.run.num_rounds + 1
        nodes = wait_for_nodes(self.grid, run.min_sites, run.round_timeout)
        arrays = to_record(state)
        config = ConfigRecord({"arch": run.arch, "image-size": run.image_size, "phase": "finetune",
                               "server-round": rnd, "round-offset": 0})
        messages = [Message(content=RecordDict({"arrays": arrays, "config": config}),
                            message_type="train", dst_node_id=n) for n in nodes]
        log.info("%s: fine-tuning at %d sites", run.arch, len(nodes))
        replies = self.grid.send_and_receive(messages, timeout=run.round_timeout)
        good = check_replies(replies, run, "finetune", self.metrics, rnd)
        log_site_replies(self.metrics, run, good, rnd, "site-finetune")
        last = self.store.last_round(run.arch)
        evaluation = global_evaluation(good)
        self.record_evaluation(run.num_rounds, evaluation, last["sites"] if last else [])
        spec = self.reference.spec
        self.store.save_model(dict(name=f"{run.arch}-global", arch=run.arch, kind="global",
                                   site=None, round=run.num_rounds, input=spec,
                                   metrics=finite_metrics(evaluation)), state)
        for r in good:
            site = site_of(r)
            m = {k: float(v) for k, v in dict(r.content["metrics"]).items()}
            self.store.save_model(dict(name=f"{run.arch}-local-{site}", arch=run.arch,
                                       kind="local", site=site, round=rnd, input=spec,
                                       metrics=finite_metrics({k: v for k, v in m.items()
                                                      if not k.startswith("global-")})),
                                  typed_state(r.content["arrays"], self.reference))


def run_federation(grid: Grid, run: RunSettings) -> None:
    """The ServerApp's whole job for one architecture."""
    Federation(grid, run).run_all()
