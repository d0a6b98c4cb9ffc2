"""Submitting one Flower run per architecture and following it: progress lines from the
store's event log while the store is readable here, the SuperLink's run status otherwise,
and the reason when a run fails."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.flower.connection import Connection
from deploy.flower.readable import strip_escapes
from shared.config.experiment import ExperimentConfig
from shared.config.run import run_settings_for
from shared.errors import FederationError
from shared.events import read_events

log = logging.getLogger(__name__)


class ProgressPrinter:
    """Prints new event-log lines as they appear: architecture, round, site, loss, AUC."""

    def __init__(self, path: Path, out: Callable[[str], None] | None = None) -> None:
        # flush each line: progress must show up at once also when stdout is a file or pipe
        self.out = out or functools.partial(print, flush=True)
        self.path, self.seen = path, len(read_events(path))

    def poll(self) -> list[dict[str, Any]]:
        rows = read_events(self.path)
        if len(rows) < self.seen:  # the ServerApp started a fresh log
            self.seen = 0
        new, self.seen = rows[self.seen :], len(rows)
        for r in new:
            line = format_event(r)
            if line:
                self.out(line)
        return new


def _f(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


def format_event(r: dict[str, Any]) -> str:
    """One readable progress line for an event ('' for events not worth a line)."""
    a, e = r.get("arch", "?"), r["event"]
    if e == "site-train":
        return f"[{a}] round {r['round']} site {r['site']}: trained, loss {_f(r.get('train-loss'))}"
    if e in ("site-evaluate", "site-finetune"):
        what = "fine-tuned local" if e == "site-finetune" else "global on val"
        return (
            f"[{a}] round {r['round']} site {r['site']}: {what}: loss {_f(r.get('val-loss'))}, "
            f"AUC {_f(r.get('val-auc'))}"
        )
    if e == "round":
        built = f"sites {','.join(r['sites'])}" if r.get("sites") else "the initial model"
        return (
            f"[{a}] round {r['round']} done ({built}): "
            f"global val loss {_f(r.get('val-loss'))}, AUC {_f(r.get('val-auc'))}"
        )
    if e == "distill":  # feddf (server.feddf)
        return (
            f"[{a}] round {r['round']}: distilled on {r['images']} public images towards "
            f"{r['teachers']} site models, loss {_f(r.get('loss-before'))} -> {_f(r.get('loss-after'))}"
        )
    if e == "site-error":
        return f"[{a}] {r['stage']} round {r['round']}: ERROR {r['reason']}"
    if e == "site-rejected":  # server.validation: the reply was not aggregated nor stored
        return f"[{a}] {r['stage']} round {r['round']}: site {r['site']}'s reply REJECTED: {r['reason']}"
    if e == "run-failed":
        return f"[{a}] run FAILED: {r['reason']}"
    if e == "run-done":
        return f"[{a}] run complete"
    if e == "run-start":
        after = r["resume_from"]
        return f"[{a}] run started ({r['rounds']} rounds{f', resuming after round {after}' if after else ''})"
    return ""


@dataclass
class Watched:
    """One submitted run and what its events said so far."""

    arch: str
    run_id: int
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def ended(self) -> bool:
        return any(e["event"] in ("run-failed", "run-done") for e in self.events)

    def failure(self) -> str | None:
        failed = [e for e in self.events if e["event"] == "run-failed"]
        return str(failed[-1]["reason"]) if failed else None


def run_all(
    cfg: ExperimentConfig,
    conn: Connection,
    store: Path,
    resume: bool,
    progress: ProgressPrinter | None,
    check: Callable[[], None] = lambda: None,
    logs_hint: str = "the SuperLink's log",
    poll_s: float = 1.0,
    status_every_s: float = 60.0,
    split: dict[str, str] | None = None,
) -> None:
    """One Flower run per architecture, all at once on the same SuperLink (or one after the
    other with federation.concurrent_runs false); raise FederationError with the reason of
    the first run that fails, after asking the SuperLink to stop the others.

    With the store readable here (`progress`), the ServerApps' events say when a run ends
    and why it failed; asking the SuperLink (`flwr ls`, a costly command) is then only a
    periodic fallback for a ServerApp that died before it could write anything. Without it
    (a remote store), the SuperLink's run status decides."""
    study = uuid.uuid4().hex[:16]  # one id for every run of this submission: one store reset
    archs = list(cfg.federation.architectures)
    if cfg.federation.strategy == "feddf":  # one run trains every architecture (server.feddf)
        archs = archs[:1]
    batches = [archs] if cfg.federation.concurrent_runs else [[a] for a in archs]
    for batch in batches:
        runs = {}
        for arch in batch:
            rc = run_settings_for(cfg, arch, store, resume, study, split).to_run_config()
            runs[arch] = Watched(arch, conn.submit(rc))
            where = "" if progress else "; no local store: polling the SuperLink"
            print(f"[{arch}] submitted as run {runs[arch].run_id}{where}", flush=True)
        try:
            _wait(conn, runs, progress, check, logs_hint, poll_s, status_every_s if progress else 15.0)
        except BaseException:
            for w in runs.values():
                if not w.done:
                    conn.stop(w.run_id)
            raise


def _wait(
    conn: Connection,
    runs: dict[str, Watched],
    progress: ProgressPrinter | None,
    check: Callable[[], None],
    logs_hint: str,
    poll_s: float,
    status_every_s: float,
) -> None:
    next_status = time.monotonic() + status_every_s
    while not all(w.done for w in runs.values()):
        time.sleep(poll_s)
        for e in progress.poll() if progress else []:
            if e.get("arch") in runs:
                runs[e["arch"]].events.append(e)
        check()
        for w in runs.values():
            reason = w.failure()
            if reason is not None:
                raise FederationError(f"{w.arch}: {reason}")
        waiting = [w for w in runs.values() if not w.done]
        if not any(w.ended for w in waiting) and time.monotonic() < next_status:
            continue
        next_status = time.monotonic() + status_every_s
        statuses = conn.statuses()
        for w in waiting:
            status = statuses.get(w.run_id, "unknown")
            if status.startswith("finished"):
                _finished(w, runs, status, progress, functools.partial(_why, conn, w.run_id, logs_hint))


_ERROR_LINE = re.compile(r"\b[A-Za-z_][\w.]*(Error|Exception): \S")
_ERROR_LEVEL = re.compile(r"\bERROR\b")


def reason_from_log(text: str) -> str | None:
    """The error a run's log (`flwr log`) ends on: its last `SomethingError: ...` line, else
    its last ERROR line; None when it holds neither."""
    lines = [ln.strip() for ln in strip_escapes(text).splitlines()]
    for pattern in (_ERROR_LINE, _ERROR_LEVEL):
        found = [ln for ln in lines if pattern.search(ln)]
        if found:
            return found[-1]
    return None


def _why(conn: Connection, run_id: int, logs_hint: str) -> str:
    """What to tell the user about a run that failed without an event: the error its log
    ends on, or where to look."""
    reason = reason_from_log(conn.log(run_id))
    return f"its log says: {reason}" if reason else f"see {logs_hint}"


def _finished(
    w: Watched,
    runs: dict[str, Watched],
    status: str,
    progress: ProgressPrinter | None,
    why: Callable[[], str],
) -> None:
    """A run the SuperLink reports finished: done, or a FederationError with the reason
    (from its events, else from `why`, which asks the run's log). The events read here go
    to every watched run: another run's run-done read now must not be lost to it (runs that
    end seconds apart were once failed as "ended ... without an event")."""
    if progress is not None:
        for e in progress.poll():
            if e.get("arch") in runs:
                runs[e["arch"]].events.append(e)
        reason = w.failure()
        if reason is not None:
            raise FederationError(f"{w.arch}: {reason}")
        if status == "finished:completed" and not w.events:
            print(
                f"[{w.arch}] run {w.run_id} complete (no events in {progress.path}: the store "
                "is not the one the ServerApp writes?)",
                flush=True,
            )
            w.done = True
            return
        if not any(e["event"] == "run-done" for e in w.events):
            raise FederationError(f"{w.arch}: run {w.run_id} ended as {status!r}; {why()}")
    if status != "finished:completed":
        raise FederationError(f"{w.arch}: run {w.run_id} ended as {status!r}; {why()}")
    if progress is None:
        print(f"[{w.arch}] run {w.run_id} complete", flush=True)
    w.done = True
