"""`fedattack federate`: a real SuperLink and one SuperNode per site as local processes on
loopback, the runs submitted with `flwr run`, live progress, a clean shutdown."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.connection import Connection, flwr_bin, path_with_bin
from server.metrics import read_metrics
from server.processes import ProcessGroup, free_port, tail, wait_for_port
from shared.config import ExperimentConfig
from shared.data.splits import make_splits, site_manifest_path
from shared.errors import FederationError
from shared.runconfig import run_settings_for
from shared.store import METRICS_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSpec:
    site: str
    manifest: Path
    cache_dir: Path
    data_root: Path | None = None
    device: str = ""
    image_size: int | None = None  # optional pin, checked against the run's image size

    def node_config(self) -> str:
        parts = [f"site='{self.site}'", f"manifest='{self.manifest}'", f"cache-dir='{self.cache_dir}'"]
        if self.data_root:
            parts.append(f"data-root='{self.data_root}'")
        if self.device:
            parts.append(f"device='{self.device}'")
        if self.image_size:
            parts.append(f"image-size={self.image_size}")
        return " ".join(parts)


class LocalDeployment:
    """SuperLink + SuperNodes on loopback with a private FLWR_HOME per process."""

    def __init__(self, work_dir: Path, nodes: list[NodeSpec], threads: int = 1) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.nodes = nodes
        self.threads = threads
        self.group = ProcessGroup(self.work_dir / "logs")
        self.port = 0
        self.connection: Connection | None = None
        self.reported: set[int] = set()

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.group.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.group.stop()

    def _env(self, name: str) -> dict[str, str]:
        home = self.work_dir / "flwr" / name
        home.mkdir(parents=True, exist_ok=True)
        t = str(max(1, self.threads))
        return {"FLWR_HOME": str(home), "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t,
                "PYTHONUNBUFFERED": "1", "PATH": path_with_bin()}

    def start(self) -> None:
        self.port = free_port()
        link = self.group.start("superlink", [
            flwr_bin("flower-superlink"), "--insecure", "--isolation", "subprocess",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
            "--port", str(self.port), "--database", str(self.work_dir / "superlink-state.db"),
        ], self._env("superlink"))
        wait_for_port("127.0.0.1", self.port, 60, link.proc, link.log_path)
        for node in self.nodes:
            self.start_node(node)
        self.connection = Connection(f"127.0.0.1:{self.port}", self.work_dir / "flwr" / "cli")

    def start_node(self, node: NodeSpec) -> None:
        self.group.start(f"site-{node.site}", [
            flwr_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(free_port()), "--node-config", node.node_config(),
        ], self._env(f"site-{node.site}"))

    def check_processes(self) -> None:
        """Fail when the SuperLink is gone; say once when a SuperNode exits (a site that
        drops out is tolerated down to federation.min_sites)."""
        for m in self.group.dead():
            if m.name == "superlink":
                raise FederationError(f"the SuperLink exited; see {m.log_path}:\n{tail(m.log_path)}")
            if m.proc.pid not in self.reported:
                self.reported.add(m.proc.pid)
                print(f"warning: SuperNode {m.name} exited with code {m.proc.returncode}; "
                      f"see {m.log_path}", flush=True)


class ProgressPrinter:
    """Prints new metrics lines as they appear: architecture, round, site, loss, AUC."""

    def __init__(self, path: Path, out: Callable[[str], None] | None = None) -> None:
        # flush each line: progress must show up at once also when stdout is a file or pipe
        self.out = out or functools.partial(print, flush=True)
        self.path, self.seen = path, len(read_metrics(path))

    def poll(self) -> list[dict]:
        rows = read_metrics(self.path)
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


def format_event(r: dict) -> str:
    a, e = r.get("arch", "?"), r["event"]
    if e == "site-train":
        return f"[{a}] round {r['round']} site {r['site']}: trained, loss {_f(r.get('train-loss'))}"
    if e in ("site-evaluate", "site-finetune"):
        what = "fine-tuned local" if e == "site-finetune" else "global on val"
        return (f"[{a}] round {r['round']} site {r['site']}: {what}: loss {_f(r.get('val-loss'))}, "
                f"AUC {_f(r.get('val-auc'))}")
    if e == "round":
        return (f"[{a}] round {r['round']} done (sites {','.join(r.get('sites', [])) or '-'}): "
                f"global val loss {_f(r.get('val-loss'))}, AUC {_f(r.get('val-auc'))}")
    if e == "site-error":
        return f"[{a}] {r['stage']} round {r['round']}: ERROR {r['reason']}"
    if e == "run-failed":
        return f"[{a}] run FAILED: {r['reason']}"
    if e == "run-done":
        return f"[{a}] run complete"
    if e == "run-start":
        return f"[{a}] run started ({r['rounds']} rounds, resuming after round {r['resume_from']})"
    return ""


def node_specs(cfg: ExperimentConfig) -> list[NodeSpec]:
    return [NodeSpec(s, site_manifest_path(cfg.splits_dir, s).absolute(), cfg.cache_dir.absolute())
            for s in cfg.data.sites]


def run_architecture(conn: Connection, run_config: dict, progress: ProgressPrinter | None,
                     check: Callable[[], None] = lambda: None, logs_hint: str = "the SuperLink's log",
                     poll_s: float = 1.0, status_every_s: float = 60.0) -> None:
    """Submit one run and wait for it; raise FederationError with the reason if it fails.

    With the store readable here (`progress`), the ServerApp's events in its metrics file
    say when a run ends and why it failed; asking the SuperLink (`flwr ls`, a costly
    command) is then only a periodic fallback for a ServerApp that died before it could
    write anything. Without it (a remote store), the SuperLink's run status decides."""
    arch = run_config["arch"]
    seen: list[dict] = []  # this run's events, as they appear
    run_id = conn.submit(run_config)
    log.info("%s: submitted as run %d", arch, run_id)
    if progress is None:
        print(f"[{arch}] submitted as run {run_id}; no local store: polling the SuperLink",
              flush=True)
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
            print(f"[{arch}] run {run_id} complete (no events in {progress.path}: the store "
                  "is not the one the ServerApp writes?)", flush=True)
            return
        if status != "finished:completed" or not any(r["event"] == "run-done" for r in rows):
            raise FederationError(f"{arch}: run {run_id} ended as {status!r}; see {logs_hint}")
        return


def prepare_store(cfg: ExperimentConfig, store: Path, resume: bool) -> None:
    """Local flow: clear the last study's manifest and metrics before the ServerApp starts
    (it does the same itself on a fresh run), keep the resolved config beside the store."""
    if not resume:
        for stale in (store / "manifest.json", store / METRICS_FILE):
            stale.unlink(missing_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    cfg.dump(store / "config.yaml")


def run_all(cfg: ExperimentConfig, conn: Connection, store: Path, resume: bool,
            progress: ProgressPrinter | None, check: Callable[[], None] = lambda: None,
            logs_hint: str = "the SuperLink's log") -> None:
    """One Flower run per architecture, in the config's order."""
    for arch in cfg.federation.architectures:
        rc = run_settings_for(cfg, arch, store, resume).to_run_config()
        run_architecture(conn, rc, progress, check, logs_hint)


def check_complete(store: Path) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    if not manifest.get("complete"):
        raise FederationError(f"{store}: the store is incomplete after all runs")


def federate(cfg: ExperimentConfig, resume: bool = False,
             on_start: Callable[[LocalDeployment], None] | None = None,
             nodes: list[NodeSpec] | None = None) -> Path:
    """Split the data, start the deployment, run every architecture; return the store path.

    `nodes` replaces the default one-SuperNode-per-site list (custom node configs);
    `on_start` is called with the running deployment (tests use it to kill a site)."""
    store = cfg.store_dir.absolute()
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    prepare_store(cfg, store, resume)
    progress = ProgressPrinter(store / METRICS_FILE)
    nodes = nodes if nodes is not None else node_specs(cfg)
    with LocalDeployment(cfg.output_dir / "deployment", nodes, cfg.training.threads) as dep:
        print(f"SuperLink on 127.0.0.1:{dep.port}; {len(dep.nodes)} SuperNodes; logs in "
              f"{dep.group.log_dir}", flush=True)
        if on_start is not None:
            on_start(dep)
        assert dep.connection is not None
        run_all(cfg, dep.connection, store, resume, progress, dep.check_processes,
                str(dep.group.log_dir / "superlink.log"))
    check_complete(store)
    return store
