"""Submitting one Flower run per architecture and following it: progress lines from the
store's event log while the store is readable here, the SuperLink's run status otherwise,
and the reason when a run fails."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.connection import Connection
from shared.config import ExperimentConfig
from shared.errors import FederationError
from shared.events import read_events
from shared.runconfig import run_settings_for

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
        return (
            f"[{a}] round {r['round']} done (sites {','.join(r.get('sites', [])) or '-'}): "
            f"global val loss {_f(r.get('val-loss'))}, AUC {_f(r.get('val-auc'))}"
        )
    if e == "site-error":
        return f"[{a}] {r['stage']} round {r['round']}: ERROR {r['reason']}"
    if e == "run-failed":
        return f"[{a}] run FAILED: {r['reason']}"
    if e == "run-done":
        return f"[{a}] run complete"
    if e == "run-start":
        return f"[{a}] run started ({r['rounds']} rounds, resuming after round {r['resume_from']})"
    return ""


def run_architecture(
    conn: Connection,
    run_config: dict[str, Any],
    progress: ProgressPrinter | None,
    check: Callable[[], None] = lambda: None,
    logs_hint: str = "the SuperLink's log",
    poll_s: float = 1.0,
    status_every_s: float = 60.0,
) -> None:
    """Submit one run and wait for it; raise FederationError with the reason if it fails.

    With the store readable here (`progress`), the ServerApp's events say when a run ends
    and why it failed; asking the SuperLink (`flwr ls`, a costly command) is then only a
    periodic fallback for a ServerApp that died before it could write anything. Without it
    (a remote store), the SuperLink's run status decides."""
    arch = run_config["arch"]
    seen: list[dict[str, Any]] = []  # this run's events, as they appear
    run_id = conn.submit(run_config)
    log.info("%s: submitted as run %d", arch, run_id)
    if progress is None:
        print(f"[{arch}] submitted as run {run_id}; no local store: polling the SuperLink", flush=True)
        status_every_s = min(status_every_s, 15.0)
    next_status = time.monotonic() + status_every_s
    while True:
        time.sleep(poll_s)
        events = [e for e in progress.poll() if e.get("arch") == arch] if progress else []
        seen += events
        check()
        ended = any(e["event"] in ("run-failed", "run-done") for e in events)
        if not ended and time.monotonic() < next_status:
            continue
        next_status = time.monotonic() + status_every_s
        status = conn.status(run_id)
        if ended and not status.startswith("finished"):
            deadline = time.monotonic() + 60  # the ServerApp is wrapping up
            while not status.startswith("finished") and time.monotonic() < deadline:
                time.sleep(1)
                status = conn.status(run_id)
        if not status.startswith("finished"):
            continue
        if progress is None:
            if status != "finished:completed":
                raise FederationError(f"{arch}: run {run_id} ended as {status!r}; see {logs_hint}")
            print(f"[{arch}] run {run_id} complete", flush=True)
            return
        rows = seen + [e for e in progress.poll() if e.get("arch") == arch]
        failed = [r for r in rows if r["event"] == "run-failed"]
        if failed:
            raise FederationError(f"{arch}: {failed[-1]['reason']}")
        if status == "finished:completed" and not rows:
            print(
                f"[{arch}] run {run_id} complete (no events in {progress.path}: the store "
                "is not the one the ServerApp writes?)",
                flush=True,
            )
            return
        if status != "finished:completed" or not any(r["event"] == "run-done" for r in rows):
            raise FederationError(f"{arch}: run {run_id} ended as {status!r}; see {logs_hint}")
        return


def run_all(
    cfg: ExperimentConfig,
    conn: Connection,
    store: Path,
    resume: bool,
    progress: ProgressPrinter | None,
    check: Callable[[], None] = lambda: None,
    logs_hint: str = "the SuperLink's log",
) -> None:
    """One Flower run per architecture, in the config's order."""
    for arch in cfg.federation.architectures:
        rc = run_settings_for(cfg, arch, store, resume).to_run_config()
        run_architecture(conn, rc, progress, check, logs_hint)
