"""The server host of a networked deployment: the SuperLink (TLS, SuperNode
authentication, persistent state), key registration and run submission (the HTTPS
server that hands the checkpoint store to the attack host is deploy.hosts.store_server).

Locked down (TLS and `app`, the signed app), the SuperLink listens on the host's loopback only
(`control_port`, 9091): the operator's `register` and `submit` reach it there. The sites'
network reaches only the Fleet proxy (deploy/hosts/fleet_proxy.py, `port`, 9093). Its SuperExec
runs as a process of its own with a shared secret, and the signed app is served to it by
a hub on loopback (deploy/hosts/app_hub.py), so that the SuperNodes receive its signature.

Each entry point checks its inputs first and fails with one clear message; the
long-running ones then run Flower's own commands as their children (deploy/flower/readable.py).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from deploy.flower.commands import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    Lockdown,
    environ,
    new_superexec_secret,
    superexec_command,
    superlink_command,
)
from deploy.flower.connection import Connection, app_dir
from deploy.flower.progress import ProgressPrinter, run_all
from deploy.flower.readable import Child, exec_readable, run_together
from deploy.hosts.app_hub import start_hub
from deploy.hosts.appsign import app_spec, load_signed_app
from deploy.hosts.checks import (
    check_public_key,
    check_server_credentials,
    covers,
    probe_tls,
    sans_of,
    split_address,
)
from deploy.hosts.fleet_guard import FleetLimits
from deploy.hosts.fleet_proxy import fleet_proxy_command
from shared.config.experiment import ExperimentConfig
from shared.errors import ConfigError, CredentialsError, DeploymentError
from shared.store.folder import CheckpointStore

DEFAULT_PORT = 9093  # the Fleet proxy: what the sites dial
CONTROL_PORT = 9091  # the SuperLink itself, on loopback: what the operator's tools dial
# Flower's SuperLink starts its own SuperExec, which dials the SuperLink on loopback.
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]


def check_superlink_inputs(credentials: Path | None, state: Path) -> None:
    state = Path(state)
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DeploymentError(f"{state}: the state folder is not writable ({e.strerror})") from None
    if credentials is None:
        return
    c = Path(credentials)
    cert = check_server_credentials(c / CA_CERT, c / SERVER_CERT, c / SERVER_KEY)
    if not any(covers(cert, [n]) for n in LOOPBACK_NAMES):
        raise CredentialsError(
            f"{c / SERVER_CERT}: subject alternative names {sans_of(cert)} lack 127.0.0.1; the "
            "SuperLink's own SuperExec dials it on loopback. Remake it with `fedattack deploy "
            "credentials --force` (it always adds 127.0.0.1 and localhost)"
        )


def start_superlink(
    credentials: Path | None,
    state: Path,
    host: str,
    port: int,
    control_port: int = CONTROL_PORT,
    app: Path | None = None,
    fleet_limits: FleetLimits | None = None,
    *,
    open_control_api: bool = False,
) -> None:
    """Check, then run the SuperLink (never returns). Insecure (`credentials` None): one
    `flower-superlink` on host:port, for local experiments. Otherwise locked down: the
    SuperLink with TLS and node authentication on 127.0.0.1:`control_port`, its SuperExec
    (shared secret), the hub serving the signed app in `app`, and the Fleet proxy on
    host:`port` (with `fleet_limits`, default FleetLimits()), all ending together. With
    credentials and no `app`, only when `open_control_api` says so: the plain SuperLink,
    every API (Control included) on host:port."""
    if credentials is not None and app is None and not open_control_api:
        raise DeploymentError(
            "a SuperLink with credentials is locked down only with the signed app: pass --app DIR, "
            "or --unsafe-open-control-api to serve the Control API on the public port"
        )
    check_superlink_inputs(credentials, state)
    state = Path(state).absolute()
    home = os.environ.get("FLWR_HOME", str(state / "flwr-home"))
    database = state / "superlink.db"
    if credentials is None:
        print(
            f"starting the SuperLink on {host}:{port}, INSECURE (no TLS, no node authentication), "
            f"state in {state}",
            flush=True,
        )
        exec_readable(superlink_command(database, host, port, None), environ(FLWR_HOME=home))
    if app is None:
        print(
            f"starting the SuperLink on {host}:{port}, TLS + SuperNode authentication, Control API "
            f"OPEN on that port (--unsafe-open-control-api; --app DIR, the app signed by `deploy "
            f"sign-app`, locks it down), state in {state}",
            flush=True,
        )
        exec_readable(superlink_command(database, host, port, Path(credentials)), environ(FLWR_HOME=home))
    signed = load_signed_app(app)  # before anything listens: a bad bundle is named now
    c = Path(credentials).absolute()
    Path(home).mkdir(parents=True, exist_ok=True)
    lockdown = Lockdown(new_superexec_secret(Path(home)))
    link = f"127.0.0.1:{control_port}"
    print(
        f"starting the SuperLink (TLS + SuperNode authentication) on {link} for the operator's tools, "
        f"the Fleet API for the sites on {host}:{port} (nothing else), serving {signed.app_id}=="
        f"{signed.version} signed by {signed.public_key_id}; state in {state}",
        flush=True,
    )
    _, hub_url = start_hub(signed)
    children = [
        Child(
            "superlink",
            superlink_command(database, "127.0.0.1", control_port, c, lockdown),
            environ(FLWR_HOME=home, FLWR_SUPERGRID_API_URL=hub_url),
        ),
        Child("superexec", superexec_command(link, lockdown.secret, c / CA_CERT), environ(FLWR_HOME=home)),
        Child(
            "fleet-proxy", fleet_proxy_command(host, port, control_port, c, database, fleet_limits), environ()
        ),
    ]
    run_together(children)


def wait_for_superlink(address: str, ca: Path | None, timeout_s: float) -> None:
    """Until the SuperLink answers a TLS handshake (or, insecure, a TCP connect)."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        if ca is not None:
            if probe_tls(address, ca) != "not reachable yet":
                return
        else:
            try:
                with socket.create_connection((host, port), timeout=5):
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise DeploymentError(f"the SuperLink at {address} is not reachable after {timeout_s:.0f}s")
        time.sleep(2)


def register_keys(address: str, ca: Path, public_keys: list[Path], wait_s: float = 120) -> None:
    """Register each site's public key with the SuperLink (idempotent)."""
    for key in public_keys:
        check_public_key(key)
    wait_for_superlink(address, ca, wait_s)
    with tempfile.TemporaryDirectory(prefix="fedattack-flwr-") as home:
        conn = Connection(address, Path(home), ca)
        for key in public_keys:
            print(f"{key}: {conn.register(key)}", flush=True)


def submit(
    cfg: ExperimentConfig,
    address: str,
    ca: Path | None,
    store: Path,
    resume: bool,
    wait_s: float = 120,
    signed: bool = False,
) -> None:
    """Submit one run per architecture to a SuperLink elsewhere and wait for each.

    `store` is the path where the ServerApp (on the SuperLink host) writes checkpoints;
    when it is readable here too (same host or shared volume) progress is printed from its
    metrics, otherwise from the SuperLink's run status. `signed`: the runs name the app
    (`@fedattack/fedattack==VERSION`), which the SuperLink fetches, signed, from its hub;
    otherwise this checkout's app goes along unsigned (sites with trusted entities
    refuse it)."""
    if cfg.federation.pooled_baseline:
        raise ConfigError(
            "federation.pooled_baseline: true trains one model on every site's data in one place, which "
            "a networked deployment never has (the store would never be complete); train it with "
            "`fedattack federate`, `demo` or `study` on one host, or set it to false"
        )
    wait_for_superlink(address, ca, wait_s)
    local = CheckpointStore(store)
    progress = ProgressPrinter(local.events_path) if local.root.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="fedattack-flwr-") as home:
        conn = Connection(address, Path(home), ca, app_spec(app_dir()) if signed else None)
        run_all(cfg, conn, local.root, resume, progress, logs_hint=f"the SuperLink's log on {address}")
    if progress is not None and local.manifest_path.is_file():
        local.check_complete()
