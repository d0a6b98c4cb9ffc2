"""FedDF (Lin et al., NeurIPS 2020) on Flower's deployment engine: one run for a federation
whose sites train different architectures (federation.strategy feddf, the site ->
architecture assignment in federation.site_architectures).

Each round: every site trains its own architecture's current global on its shard (the
FedAvg round's message, validated first, as in server.federation); per architecture the
server screens the replies (server.validation, against that architecture's layout) and
averages them, weighted by training images (FedAvg within the group); then, per
architecture, it distils the average on the unlabeled public split towards the ensemble of
every accepted site model, all architectures (shared.ml.distill), and sends the distilled
global on, to that architecture's sites only. After the last round each site fine-tunes
its architecture's final global, as in a FedAvg run; the store holds `<arch>-global` per
architecture and `<arch>-local-<site>` per site, its own architecture only.

What the sites send and what the server sees: the same as under FedAvg, per site its
trained weights of its own architecture and its metrics; nothing else. The server reads
the public split's images itself (data.split.public_fraction: patients no site and no test
set holds; their labels are never read), runs every site's model on them for the ensemble's
logits, and trains each architecture's average on them. A site receives only its own
architecture's global: the server learns which node is which site from a query message
first, every message names the architecture it carries, and the ClientApp refuses one that
is not its own (clients.app); each reply says what the site received, in the event log.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch.utils.data import ConcatDataset, Dataset

from server.federation import Federation, typed_state, wait_for_nodes
from server.plot import plot_metrics
from server.strategy import check_replies, global_evaluation, log_site_replies, site_of
from server.validation import flat_of
from shared.config.data import loader_workers
from shared.config.run import RunSettings
from shared.data.cache import load_cached
from shared.data.manifest import load_manifest
from shared.data.torchdata import CachedDataset
from shared.errors import DatasetError, FederationError
from shared.events import EventLog
from shared.ml.distill import distil, ensemble_logits
from shared.ml.models import Classifier
from shared.ml.training import pick_device
from shared.ml.wire import FLAT_KEY, arrays_in, config_in, config_value, metrics_in, pack, to_record
from shared.seeds import derive_seed
from shared.store.folder import CheckpointStore

log = logging.getLogger(__name__)
SITE_QUERY = "query"  # the message that asks a node which site it is


def public_images(run: RunSettings) -> Dataset:
    """The public split's training images over every dataset (labels never read)."""
    parts = []
    for path in run.public:
        try:
            manifest = load_manifest(Path(path))
        except DatasetError as e:
            raise FederationError(
                f"feddf distils on the public split: {e} (is data.split.public_fraction above 0 and the "
                "split written where the ServerApp reads it?)"
            ) from None
        cached = load_cached(
            manifest,
            "train",
            run.image_size,
            Path(run.cache),
            loader_workers(run.workers),
            run.skip_unreadable,
        )
        parts.append(CachedDataset(cached, run.channels))
    data: ConcatDataset[tuple[torch.Tensor, int]] = ConcatDataset(parts)
    if len(data) == 0:
        raise FederationError(
            f"feddf: the public split ({', '.join(run.public)}) holds no training image; raise "
            "data.split.public_fraction"
        )
    return data


def weighted_mean(flats: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """FedAvg's aggregate of packed vectors: their mean weighted by training images,
    summed in float64."""
    total = np.zeros_like(flats[0], dtype=np.float64)
    for x, w in zip(flats, weights, strict=True):
        total += np.asarray(x, dtype=np.float64) * w
    return (total / sum(weights)).astype(np.float32)


class HeteroFederation:
    """The state of one feddf run: one Federation per architecture (its reference model,
    screen, store entries and events), the node -> site map, the public images."""

    def __init__(self, grid: Grid, run: RunSettings) -> None:
        if run.resume:  # refused here: run_federation records a set-up failure as run-failed
            raise FederationError("feddf: a run cannot resume (no --resume); start the federation afresh")
        self.grid, self.run = grid, run
        self.store = CheckpointStore(run.store)
        self.events = EventLog(self.store.events_path)
        if run.training.threads > 0:  # the server distils beside the sites on a shared host
            torch.set_num_threads(run.training.threads)
        fed = run.federation
        spare = len(run.sites) - fed.min_sites  # the sites a round may miss, in any group
        self.groups: dict[str, Federation] = {}
        for arch in fed.architectures:
            sites = tuple(s for s in run.sites if run.assignment.get(s) == arch)
            if not sites:
                raise FederationError(f"feddf: no site trains {arch} (run config key 'site-archs')")
            quorum = max(1, len(sites) - spare)
            group = replace(run.for_arch(arch), sites=sites, federation=replace(fed, min_sites=quorum))
            self.groups[arch] = Federation(grid, group)
        self.public = public_images(run)
        self.device = pick_device()
        self.sites: dict[int, str] = {}  # node id -> site, from the sites' own answers

    def arch_of(self, site: str) -> str:
        return self.run.assignment[site]

    def nodes(self) -> dict[int, str]:
        """The connected nodes and their sites (asking the ones not asked yet)."""
        fed = self.run.federation
        nodes = wait_for_nodes(self.grid, fed.min_sites, fed.round_timeout_s)
        unknown, errors = [n for n in nodes if n not in self.sites], []
        if unknown:
            ask = ConfigRecord({"ask": "site"})
            messages = [
                Message(content=RecordDict({"config": ask}), message_type=SITE_QUERY, dst_node_id=n)
                for n in unknown
            ]
            for reply in self.grid.send_and_receive(messages, timeout=fed.round_timeout_s):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    errors.append(f"node {node}: {reply.error.reason}")
                    log.error("feddf: node %d did not say its site: %s", node, reply.error.reason)
                    self.events.write(
                        "site-error", arch=self.run.arch, stage="query", round=0, reason=errors[-1]
                    )
                    continue
                site = config_value(config_in(reply.content, "meta"), "site", str)
                if site not in self.run.assignment:
                    raise FederationError(
                        f"feddf: node {node} is site {site[:40]!r}, which federation.site_architectures "
                        f"does not list ({', '.join(self.run.assignment)})"
                    )
                self.sites[node] = site
        live = {n: self.sites[n] for n in nodes if n in self.sites}
        claimed = sorted(live.values())
        if len(set(claimed)) != len(claimed):
            raise FederationError(f"feddf: two SuperNodes claim one site: {claimed}")
        if len(live) < fed.min_sites:
            raise FederationError(
                f"feddf: {len(live)} of the required {fed.min_sites} sites said which site they are "
                f"({', '.join(claimed) or 'none'}). " + " | ".join(errors)
            )
        return live

    def run_all(self) -> None:
        """Rounds of local training, FedAvg per architecture and distillation, then the
        fine-tune step; the store marked complete when every model is in."""
        run, fed = self.run, self.run.federation
        if run.study:
            self.store.begin(run.study, run.resume)
        if run.split_digests:
            self.store.record_split(run.split_digests, run.resume)
        else:
            self.store.reset()
        self.events.write(
            "run-start", arch=run.arch, rounds=fed.rounds, resume_from=0, site_architectures=run.assignment
        )
        try:
            states = {
                a: {k: v.detach().clone() for k, v in g.reference.state_dict().items()}
                for a, g in self.groups.items()
            }
            for group in self.groups.values():
                group.save_round(0, states[group.run.arch], [])
            contributors: dict[str, list[str]] = {a: [] for a in self.groups}
            for rnd in range(1, fed.rounds + 1):
                states, contributors = self.round(rnd, states, contributors)
            self.finetune(states)
        except Exception as e:
            self.events.write("run-failed", arch=run.arch, reason=f"{type(e).__name__}: {e}")
            raise
        complete = self.store.mark_complete(
            list(fed.architectures),
            list(run.sites),
            fed.min_sites,
            pooled=fed.pooled_baseline,
            site_archs=run.assignment,
        )
        self.events.write("run-done", arch=run.arch, store_complete=complete)
        plot_metrics(self.store.events_path, self.store.plot_path)

    def send(
        self, phase: str, rnd: int, states: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, list[Message]]:
        """Each node its own architecture's global; the replies by architecture (of the
        global sent to the replying node)."""
        nodes = self.nodes()
        records = {a: to_record(s) for a, s in states.items()}
        messages, sent = [], {}
        for node, site in nodes.items():
            arch = self.arch_of(site)
            if phase == "finetune":
                messages += self.groups[arch].finetune_messages(states[arch], [node])
            else:
                config = ConfigRecord({"phase": phase, "server-round": rnd, "round-offset": 0, "arch": arch})
                content = RecordDict({"arrays": records[arch], "config": config})
                messages.append(Message(content=content, message_type="train", dst_node_id=node))
            sent[node] = arch
            self.events.write(
                "feddf-sent",
                arch=arch,
                stage=phase,
                round=rnd,
                site=site,
                weights=int(records[arch][FLAT_KEY].shape[0]),
            )
        log.info(
            "feddf %s round %d: %d sites, %s", phase, rnd, len(nodes), {n: sent[n] for n in sorted(sent)}
        )
        replies = self.grid.send_and_receive(messages, timeout=self.run.federation.round_timeout_s)
        by_arch: dict[str, list[Message]] = {a: [] for a in self.groups}
        for reply in replies:
            owner = sent.get(reply.metadata.src_node_id)
            if owner is None:
                log.error(
                    "feddf round %d: a reply from node %d, sent nothing", rnd, reply.metadata.src_node_id
                )
                continue
            by_arch[owner].append(reply)
            if not reply.has_error():
                self.record_received(reply, owner, phase, rnd)
        return by_arch

    def record_received(self, reply: Message, arch: str, phase: str, rnd: int) -> None:
        """What the site says it received (its reply's meta), beside what was sent it."""
        meta = config_in(reply.content, "meta")
        self.events.write(
            "feddf-received",
            arch=arch,
            stage=phase,
            round=rnd,
            site=str(meta.get("site", "")),
            **{
                "received-arch": str(meta.get("received-arch", "")),
                "received-weights": meta.get("received-weights", -1),
            },
        )

    def round(
        self,
        rnd: int,
        states: dict[str, dict[str, torch.Tensor]],
        previous: dict[str, list[str]],
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[str]]]:
        """One FedDF round: local training, FedAvg per architecture, distillation."""
        by_arch = self.send("fedavg", rnd, states)
        averaged: dict[str, dict[str, torch.Tensor]] = {}
        teachers: list[Classifier] = []
        contributors: dict[str, list[str]] = {}
        for arch, group in self.groups.items():
            sent = flat_of(to_record(states[arch]))
            good = check_replies(by_arch[arch], group.run, "train", self.events, rnd, group.screen, sent)
            contributors[arch] = [site_of(r) for r in good]
            group.record_evaluation(rnd - 1, global_evaluation(good), previous[arch])
            log_site_replies(self.events, group.run, good, rnd, "site-train")
            flats = [np.asarray(arrays_in(r.content)[FLAT_KEY].numpy()) for r in good]
            weights = [metrics_in(r.content)["num-examples"] for r in good]
            mean = weighted_mean(flats, weights)
            if not np.isfinite(mean).all():
                raise FederationError(f"{arch} round {rnd}: the averaged global is not finite; the run stops")
            averaged[arch] = typed_state(ArrayRecord({FLAT_KEY: Array(mean)}), group.reference)
            for r in good:
                teachers.append(self.model(arch, typed_state(arrays_in(r.content), group.reference)))
        fed = self.run.federation
        batch = self.run.training.batch_size * 2
        teacher = ensemble_logits(teachers, self.public, batch, self.device)
        del teachers
        out: dict[str, dict[str, torch.Tensor]] = {}
        for arch, group in self.groups.items():
            student = self.model(arch, averaged[arch])
            seed = derive_seed(
                self.run.seed, "feddf-batches", server_round=rnd, site=list(self.groups).index(arch)
            )
            done = distil(
                student,
                self.public,
                teacher,
                fed.distill_steps,
                fed.distill_lr,
                fed.distill_temperature,
                self.run.training.batch_size,
                self.device,
                seed,
            )
            out[arch] = {k: v.detach().cpu() for k, v in student.state_dict().items()}
            change = float(np.linalg.norm(pack(out[arch]).astype(np.float64) - pack(averaged[arch])))
            log.info("%s round %d: distillation loss %.4f -> %.4f", arch, rnd, done.before, done.after)
            self.events.write(
                "distill",
                arch=arch,
                round=rnd,
                steps=done.steps,
                teachers=sum(len(c) for c in contributors.values()),
                images=len(self.public),  # type: ignore[arg-type]
                change=change,
                kept_step=done.kept_step,
                **{"loss-before": done.before, "loss-after": done.after, "loss-last-step": done.last},
            )
            group.save_round(rnd, out[arch], contributors[arch])
        return out, contributors

    def model(self, arch: str, state: dict[str, torch.Tensor]) -> Classifier:
        """A model of `arch` holding `state`, on the server's device."""
        model = copy.deepcopy(self.groups[arch].reference)
        model.load_state_dict(state)
        return model.to(self.device)

    def finetune(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        """Each site validates and fine-tunes its architecture's final global; per
        architecture, the global stored with its sites' statistics and threshold, and
        each site's reply as its local (server.federation's fine-tune step)."""
        rnd = self.run.federation.rounds + 1
        by_arch = self.send("finetune", rnd, states)
        for arch, group in self.groups.items():
            group.keep_finetuned(states[arch], by_arch[arch])
