"""`fedattack federate`: a real SuperLink and one SuperNode per site as local processes on
loopback, the runs submitted with `flwr run`, live progress, a clean shutdown."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.metrics import METRICS_FILE, read_metrics
from server.processes import ProcessGroup, free_port, tail, wait_for_port
from shared.config import ExperimentConfig
from shared.data.splits import make_splits, site_manifest_path
from shared.errors import FederationError
from shared.runconfig import format_run_config, run_settings_for

log = logging.getLogger(__name__)
PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def flwr_bin(name: str) -> str:
    p = BIN / name
    return str(p) if p.exists() else name


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
        self.cli_home = self.work_dir / "flwr" / "cli"
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
                "PYTHONUNBUFFERED": "1", "PATH": _path_with_bin()}

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
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            f'[superlink.local]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def start_node(self, node: NodeSpec) -> None:
        self.group.start(f"site-{node.site}", [
            flwr_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(free_port()), "--node-config", node.node_config(),
        ], self._env(f"site-{node.site}"))

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([flwr_bin("flwr"), *args], capture_output=True, text=True,
                              env={**_environ(), "FLWR_HOME": str(self.cli_home)},
                              cwd=self.work_dir, timeout=timeout)

    def submit(self, run_config: dict) -> int:
        res = self.flwr("run", str(PROJECT_DIR), "local", "--run-config",
                        format_run_config(run_config), "--format", "json")
        try:
            out = json.loads(res.stdout)
            if not out.get("success", False):
                raise ValueError(out)
            return int(out["run-id"])
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise FederationError(f"`flwr run` failed: {res.stdout}\n{res.stderr}") from e

    def status(self, run_id: int) -> str:
        res = self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json")
        try:
            return str(json.loads(res.stdout)["runs"][0]["status"])
        except (json.JSONDecodeError, KeyError, IndexError):
            return "unknown"

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


def _environ() -> dict[str, str]:
    return {**os.environ, "PATH": _path_with_bin()}


def _path_with_bin() -> str:
    """PATH with this interpreter's bin first: Flower starts `flower-superexec`,
    `flwr-serverapp` and `flwr-clientapp` by name, also from an unactivated venv."""
    return os.pathsep.join([str(BIN), os.environ.get("PATH", "")])


class ProgressPrinter:
    """Prints new metrics lines as they appear: architecture, round, site, loss, AUC."""

    def __init__(self, path: Path, out: Callable[[str], None] | None = None) -> None:
        # flush each line: progress must show up at once also when stdout is a file or pipe
        self.out = out or functools.partial(print, flush=True)
        self.path, self.seen = path, len(read_metrics(path))

    def poll(self) -> list[dict]:
        rows = read_metrics(self.path)
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


def run_architecture(dep: LocalDeployment, run_config: dict, progress: ProgressPrinter,
                     poll_s: float = 1.0, status_every_s: float = 60.0) -> None:
    """Submit one run and wait for it; raise FederationError with the reason if it fails.

    The ServerApp's events in the metrics file say when a run ends; asking the SuperLink
    (`flwr ls`, a costly command) is only a periodic fallback for a ServerApp that died
    before it could write anything."""
    arch = run_config["arch"]
    first_row = len(read_metrics(progress.path))
    run_id = dep.submit(run_config)
    log.info("%s: submitted as run %d", arch, run_id)
    next_status = time.monotonic() + status_every_s
    while True:
        time.sleep(poll_s)
        events = [e for e in progress.poll() if e.get("arch") == arch]
        dep.check_processes()
        ended = any(e["event"] in ("run-failed", "run-done") for e in events)
        if not ended and time.monotonic() < next_status:
            continue
        next_status = time.monotonic() + status_every_s
        status = dep.status(run_id)
        if ended and not status.startswith("finished"):
            deadline = time.monotonic() + 60  # the ServerApp is wrapping up
            while not status.startswith("finished") and time.monotonic() < deadline:
                time.sleep(1)
                status = dep.status(run_id)
        if status.startswith("finished"):
            progress.poll()
            rows = [r for r in read_metrics(progress.path)[first_row:] if r.get("arch") == arch]
            done = [r for r in rows if r["event"] == "run-done"]
            failed = [r for r in rows if r["event"] == "run-failed"]
            if failed:
                raise FederationError(f"{arch}: {failed[-1]['reason']}")
            if status != "finished:completed" or not done:
                raise FederationError(f"{arch}: run {run_id} ended as {status!r}; see "
                                      f"{dep.group.log_dir / 'superlink.log'}")
            return


def federate(cfg: ExperimentConfig, resume: bool = False,
             on_start: Callable[[LocalDeployment], None] | None = None,
             nodes: list[NodeSpec] | None = None) -> Path:
    """Split the data, start the deployment, run every architecture; return the store path.

    `nodes` replaces the default one-SuperNode-per-site list (custom node configs);
    `on_start` is called with the running deployment (tests use it to kill a site)."""
    store = cfg.store_dir.absolute()
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    if not resume:
        for stale in (store / "manifest.json", store / METRICS_FILE):
            stale.unlink(missing_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    cfg.dump(store / "config.yaml")
    progress = ProgressPrinter(store / METRICS_FILE)
    nodes = nodes if nodes is not None else node_specs(cfg)
    with LocalDeployment(cfg.output_dir / "deployment", nodes, cfg.training.threads) as dep:
        print(f"SuperLink on 127.0.0.1:{dep.port}; {len(dep.nodes)} SuperNodes; logs in "
              f"{dep.group.log_dir}", flush=True)
        if on_start is not None:
            on_start(dep)
        for arch in cfg.federation.architectures:
            rc = run_settings_for(cfg, arch, store, resume).to_run_config()
            run_architecture(dep, rc, progress)
    manifest = json.loads((store / "manifest.json").read_text())
    if not manifest.get("complete"):
        raise FederationError(f"{store}: the store is incomplete after all runs")
    return store
