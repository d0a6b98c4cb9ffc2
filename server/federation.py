"""One Flower run = one architecture: FedAvg rounds with a stored global checkpoint per
round, then a fine-tune step whose replies become the sites' local checkpoints.

Federated evaluation is folded into the training messages: each site first validates
the global model it receives, then trains. Round r's global model is therefore
evaluated by the replies of round r+1 (or of the fine-tune step, for the last round),
which saves one full Flower round trip per round.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from server.plot import plot_metrics
from server.strategy import check_replies, global_evaluation, log_site_replies, make_strategy, site_of
from server.threshold import calibrated_global
from server.validation import Screen, flat_of, layout
from shared.config.run import RunSettings
from shared.errors import FederationError
from shared.events import EventLog
from shared.ml.batchnorm import pool, statistics
from shared.ml.calibration import UNCALIBRATED, bias_key
from shared.ml.models import Classifier, build_model
from shared.ml.wire import arrays_in, from_record, metrics_in, to_record
from shared.store.folder import CheckpointStore

log = logging.getLogger(__name__)


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
        self.events = EventLog(self.store.events_path)
        torch.manual_seed(run.seed)
        self.reference = build_model(
            run.arch,
            run.image_size,
            run.channels,
            Path(run.pretrained) if run.pretrained else None,
            run.net_size,
        )
        if run.training.calibration == "youden":
            bias_key(self.reference)  # an architecture without a 2-class linear head: fail now
        fed = run.federation
        self.screen = Screen(layout(self.reference, fed.strategy == "fedbn"), fed.update_norm_multiple)

    def run_all(self) -> None:
        """FedAvg for num_rounds rounds (resuming if asked), then the fine-tune step."""
        run = self.run
        state = {k: v.detach().clone() for k, v in self.reference.state_dict().items()}
        offset = 0
        # a fresh study: a complete manifest left from an earlier one must not make a
        # watching attack service start early (the submitter may be on another host)
        if run.study:
            self.store.begin(run.study, run.resume)
        if run.split_digests:
            self.store.record_split(run.split_digests, run.resume)
        elif not run.resume and run.arch == run.federation.architectures[0]:
            self.store.reset()  # a hand-started `flwr run`, one architecture after the other
        if run.resume:
            last = self.store.last_round(run.arch)
            if last is not None:
                state = self.store.load(last["file"], last["sha256"])
                offset = int(last["round"])
                log.info("%s: resuming after stored round %d", run.arch, offset)
        self.events.write("run-start", arch=run.arch, rounds=run.federation.rounds, resume_from=offset)
        try:
            final = self.fedavg(state, offset)
            self.finetune(final)
        except Exception as e:
            self.events.write("run-failed", arch=run.arch, reason=f"{type(e).__name__}: {e}")
            raise
        fed = run.federation
        complete = self.store.mark_complete(
            list(fed.architectures), list(run.sites), fed.min_sites, pooled=fed.pooled_baseline
        )
        self.events.write("run-done", arch=run.arch, store_complete=complete)
        plot_metrics(self.store.events_path, self.store.plot_path)

    def save_round(self, rnd: int, state: dict[str, torch.Tensor], sites: list[str]) -> None:
        self.store.save_round(
            self.run.arch, rnd, state, self.reference.spec, {}, sites, self.run.to_run_config()
        )
        self.events.write("round-saved", arch=self.run.arch, round=rnd, sites=sites)

    def record_evaluation(self, rnd: int, evaluation: dict[str, float], sites: list[str]) -> None:
        self.store.update_round_metrics(self.run.arch, rnd, evaluation)
        self.events.write("round", arch=self.run.arch, round=rnd, sites=sites, **evaluation)

    def fedavg(self, state: dict[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
        run = self.run
        if offset >= run.federation.rounds:
            return state
        strategy = make_strategy(run, self.events, offset, self.screen)
        config = ConfigRecord({"phase": "fedavg", "round-offset": offset})

        def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            rnd = server_round + offset
            if server_round == 0:
                if offset == 0:
                    self.save_round(0, typed_state(arrays, self.reference), [])
                return None
            self.save_round(rnd, typed_state(arrays, self.reference), strategy.contributors[rnd])
            self.record_evaluation(
                rnd - 1, strategy.evaluation[rnd - 1], strategy.contributors.get(rnd - 1, [])
            )
            return None

        wait_for_nodes(self.grid, run.federation.min_sites, run.federation.round_timeout_s)
        result = strategy.start(
            self.grid,
            to_record(state),
            num_rounds=run.federation.rounds - offset,
            timeout=run.federation.round_timeout_s,
            train_config=config,
            evaluate_fn=after_round,
        )
        return typed_state(result.arrays, self.reference)

    def finetune(self, state: dict[str, torch.Tensor]) -> None:
        """Each site validates the final global model, then fine-tunes it on its own shard;
        the replies become the local checkpoints."""
        run = self.run
        nodes = wait_for_nodes(self.grid, run.federation.min_sites, run.federation.round_timeout_s)
        log.info("%s: fine-tuning at %d sites", run.arch, len(nodes))
        replies = self.grid.send_and_receive(
            self.finetune_messages(state, nodes), timeout=run.federation.round_timeout_s
        )
        self.keep_finetuned(state, replies)

    def finetune_messages(self, state: dict[str, torch.Tensor], nodes: list[int]) -> list[Message]:
        """The fine-tune step's message to each of `nodes`: the final global, and which
        architecture it is (a feddf site refuses another's)."""
        run, arrays = self.run, to_record(state)
        config = ConfigRecord(
            {
                "phase": "finetune",
                "server-round": run.federation.rounds + 1,
                "round-offset": 0,
                "personal-bn": run.federation.strategy == "fedbn",
                "arch": run.arch,
            },
        )
        return [
            Message(
                content=RecordDict({"arrays": arrays, "config": config}), message_type="train", dst_node_id=n
            )
            for n in nodes
        ]

    def keep_finetuned(self, state: dict[str, torch.Tensor], replies: Iterable[Message]) -> None:
        """The fine-tune step's replies to the global `state`: screened, the global stored
        with the statistics and threshold they give it, each accepted one as a local."""
        run, rnd = self.run, self.run.federation.rounds + 1
        sent = flat_of(to_record(state))
        good = check_replies(replies, run, "finetune", self.events, rnd, self.screen, sent)
        log_site_replies(self.events, run, good, rnd, "site-finetune")
        last = self.store.last_round(run.arch)
        evaluation = global_evaluation(good)
        self.record_evaluation(run.federation.rounds, evaluation, last["sites"] if last else [])
        spec = self.reference.spec
        final, metrics = self.with_pooled_batchnorm(state, good), evaluation
        if run.training.calibration == "youden" and run.federation.strategy == "fedbn":
            # the sites validated their personalised versions, not this average: no data
            # to cut the stored global's threshold on; it keeps argmax
            metrics = {**evaluation, **UNCALIBRATED}
        elif run.training.calibration == "youden":
            final, metrics = calibrated_global(final, evaluation, good, run.arch, bias_key(self.reference))
        self.store.save_model(
            final,
            name=f"{run.arch}-global",
            arch=run.arch,
            kind="global",
            site=None,
            round=run.federation.rounds,
            input=spec,
            metrics=metrics,
            training=run.training_record,
        )
        for r in good:
            site = site_of(r)
            m = metrics_in(r.content)
            self.store.save_model(
                typed_state(arrays_in(r.content), self.reference),
                name=f"{run.arch}-local-{site}",
                arch=run.arch,
                kind="local",
                site=site,
                round=rnd,
                input=spec,
                metrics={k: v for k, v in m.items() if not k.startswith("global-")},
                training=run.training_record,
            )

    def with_pooled_batchnorm(
        self, state: dict[str, torch.Tensor], replies: list[Message]
    ) -> dict[str, torch.Tensor]:
        """The global weights with the BatchNorm statistics the sites re-estimated for them,
        pooled exactly (weighted by training images); FedAvg's averaged statistics when the
        run restarts statistics instead."""
        if self.run.training.batchnorm != "recalibrate":
            return state
        reference = statistics(self.reference)
        stats = [
            from_record(arrays_in(r.content, "received-bn"), reference, "BatchNorm statistics")
            for r in replies
        ]
        weights = [metrics_in(r.content)["num-examples"] for r in replies]
        return {**state, **pool(stats, weights)}


class Runs(Protocol):
    def run_all(self) -> None: ...


def run_federation(
    grid: Grid, run: RunSettings, make: Callable[[Grid, RunSettings], Runs] = Federation
) -> None:
    """The ServerApp's whole job for one architecture. An error in the set-up (a store
    folder it cannot write, a model it cannot build) is recorded as a run-failed event
    where the store can take one, and goes to the run's log (`flwr log`) either way, where
    the submitting CLI reads it when the store has nothing. `make`: the run's federation
    (server.feddf's for feddf)."""
    try:
        federation = make(grid, run)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        log.error("%s: the ServerApp could not start: %s", run.arch, reason)
        with contextlib.suppress(OSError):
            EventLog(CheckpointStore(run.store).events_path).write("run-failed", arch=run.arch, reason=reason)
        raise
    federation.run_all()
