"""`fedattack federate`: a real SuperLink and one SuperNode per site as local processes on
loopback (insecure: nothing leaves the machine), the runs submitted with `flwr run`, live
progress, a clean shutdown."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from deploy.flower.commands import path_with_bin, superlink_command, supernode_command
from deploy.flower.connection import Connection
from deploy.flower.processes import ProcessGroup, free_port, tail, wait_for_port
from deploy.flower.progress import ProgressPrinter, run_all
from shared.config.experiment import ExperimentConfig
from shared.config.node import NodeConfig
from shared.data.fingerprint import split_fingerprint
from shared.data.manifest import site_manifest_path
from shared.devices import present_gpus, require_present, visible_gpus
from shared.errors import FederationError
from shared.events import EventLog
from shared.prep.splits import make_splits
from shared.store.folder import CheckpointStore

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
# The SuperLink's state (runs, messages, the models they carry) in its own memory: a local
# federation lives and dies with this process, and an SQLite file would only add a write
# and a read of every model sent (about 6.7 GB over a demo) and old runs on a re-run.
IN_MEMORY = ":flwr-in-memory:"


class LocalDeployment:
    """SuperLink + SuperNodes on loopback with a private FLWR_HOME per process."""

    def __init__(self, work_dir: Path, nodes: list[NodeConfig], threads: int = 1) -> None:
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
        return {
            "FLWR_HOME": str(home),
            "OMP_NUM_THREADS": t,
            "MKL_NUM_THREADS": t,
            "PYTHONUNBUFFERED": "1",
            "PATH": path_with_bin(),
        }

    def start(self) -> None:
        self.port = free_port()
        link = self.group.start(
            "superlink",
            superlink_command(IN_MEMORY, LOOPBACK, self.port, None),
            self._env("superlink"),
        )
        wait_for_port(LOOPBACK, self.port, 60, link.proc, link.log_path)
        for node in self.nodes:
            self.start_node(node)
        self.connection = Connection(f"{LOOPBACK}:{self.port}", self.work_dir / "flwr" / "cli")

    def start_node(self, node: NodeConfig) -> None:
        self.group.start(
            f"site-{node.site}",
            supernode_command(node, f"{LOOPBACK}:{self.port}", free_port()),
            self._env(f"site-{node.site}"),
        )

    def check_processes(self) -> None:
        """Fail when the SuperLink is gone; say once when a SuperNode exits (a site that
        drops out is tolerated down to federation.min_sites)."""
        for m in self.group.dead():
            if m.name == "superlink":
                raise FederationError(f"the SuperLink exited; see {m.log_path}:\n{tail(m.log_path)}")
            if m.proc.pid not in self.reported:
                self.reported.add(m.proc.pid)
                print(
                    f"warning: SuperNode {m.name} exited with code {m.proc.returncode}; see {m.log_path}",
                    flush=True,
                )


def place_sites(sites: tuple[str, ...], pinned: dict[str, str], gpus: int) -> dict[str, str]:
    """Each site's device: its `federation.site_devices` entry, else the visible GPUs
    round-robin in site order (one site per GPU when there are enough), else the CPU.
    A pinned GPU that is not there is a ConfigError naming the key, before any training."""
    present = present_gpus(gpus)
    placed = {}
    for i, site in enumerate(sites):
        device = pinned.get(site) or (present[i % gpus] if gpus else "cpu")
        require_present(
            f"federation.site_devices.{site}", device, gpus, "pin the site to one of them or to 'cpu'"
        )
        placed[site] = device
    return placed


def node_configs(cfg: ExperimentConfig, gpus: int | None = None) -> list[NodeConfig]:
    """One node config per configured site, reading the local splits and cache, each on its
    device (place_sites; `gpus` replaces the visible GPU count)."""
    count = visible_gpus() if gpus is None else gpus
    devices = place_sites(cfg.data.sites, cfg.federation.site_devices, count)
    return [
        NodeConfig(
            s, site_manifest_path(cfg.splits_dir, s).absolute(), cfg.cache_dir.absolute(), device=devices[s]
        )
        for s in cfg.data.sites
    ]


def record_placement(store: CheckpointStore, nodes: list[NodeConfig]) -> None:
    """Each site's device in the run's event log and the store's manifest."""
    devices = {n.site: n.device or "auto" for n in nodes}
    EventLog(store.events_path).write("placement", devices=devices)
    store.record_devices(devices)


def federate(
    cfg: ExperimentConfig,
    resume: bool = False,
    on_start: Callable[[LocalDeployment], None] | None = None,
    nodes: list[NodeConfig] | None = None,
) -> Path:
    """Split the data, start the deployment, run every architecture, then (with
    federation.pooled_baseline) train the pooled baseline; return the store path.

    `nodes` replaces the default one-SuperNode-per-site list (custom node configs);
    `on_start` is called with the running deployment (tests use it to kill a site)."""
    store = CheckpointStore(cfg.store_dir.absolute())
    nodes = nodes if nodes is not None else node_configs(cfg)  # a missing GPU refused first
    make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir)
    if not resume:
        store.reset()  # the ServerApp does the same on a fresh run; the progress printer starts clean
    cfg.dump(store.config_path)
    progress = ProgressPrinter(store.events_path)
    with LocalDeployment(cfg.output_dir / "deployment", nodes, cfg.training.threads) as dep:
        placed = ", ".join(f"{n.site} {n.device or 'auto'}" for n in nodes)
        print(
            f"SuperLink on {LOOPBACK}:{dep.port}; {len(dep.nodes)} SuperNodes ({placed}); "
            f"logs in {dep.group.log_dir}",
            flush=True,
        )
        if on_start is not None:
            on_start(dep)
        assert dep.connection is not None
        run_all(
            cfg,
            dep.connection,
            store.root,
            resume,
            progress,
            dep.check_processes,
            str(dep.group.log_dir / "superlink.log"),
            split=split_fingerprint(cfg.splits_dir),
        )
    record_placement(store, nodes)  # after the runs: a fresh study's first run resets the log
    if cfg.federation.pooled_baseline:  # the store is complete only once these are in it
        from shared.pooled.baseline import train_pooled  # timm and the training loop: only here

        train_pooled(cfg, store, resume)
    store.check_complete()
    return store.root
