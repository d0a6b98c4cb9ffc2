"""The server host of a networked deployment: the SuperLink (TLS, SuperNode
authentication, persistent state), key registration and run submission (the HTTPS
server that hands the checkpoint store to the attack host is deploy.store_server).

Each entry point checks its inputs first and fails with one clear message; the
long-running ones then exec Flower's own command, so that signals reach it directly.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from deploy.checks import (
    check_public_key,
    check_server_credentials,
    covers,
    probe_tls,
    sans_of,
    split_address,
)
from deploy.connection import Connection
from deploy.flower import CA_CERT, SERVER_CERT, SERVER_KEY, environ, superlink_command
from deploy.progress import ProgressPrinter, run_all
from deploy.readable import exec_readable
from shared.config import ExperimentConfig
from shared.errors import CredentialsError, DeploymentError
from shared.store import CheckpointStore

DEFAULT_PORT = 9093
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


def start_superlink(credentials: Path | None, state: Path, host: str, port: int) -> None:
    """Check, then run `flower-superlink` (never returns; deploy/readable.py)."""
    check_superlink_inputs(credentials, state)
    cmd = superlink_command(Path(state) / "superlink.db", host, port, credentials)
    mode = (
        "INSECURE (no TLS, no node authentication)"
        if credentials is None
        else "TLS + SuperNode authentication"
    )
    print(f"starting the SuperLink on {host}:{port}, {mode}, state in {state}", flush=True)
    env = environ(FLWR_HOME=os.environ.get("FLWR_HOME", str(Path(state).absolute() / "flwr-home")))
    exec_readable(cmd, env)


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
    cfg: ExperimentConfig, address: str, ca: Path | None, store: Path, resume: bool, wait_s: float = 120
) -> None:
    """Submit one run per architecture to a SuperLink elsewhere and wait for each.

    `store` is the path where the ServerApp (on the SuperLink host) writes checkpoints;
    when it is readable here too (same host or shared volume) progress is printed from its
    metrics, otherwise from the SuperLink's run status."""
    wait_for_superlink(address, ca, wait_s)
    local = CheckpointStore(store)
    progress = ProgressPrinter(local.events_path) if local.root.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="fedattack-flwr-") as home:
        conn = Connection(address, Path(home), ca)
        run_all(cfg, conn, local.root, resume, progress, logs_hint=f"the SuperLink's log on {address}")
    if progress is not None and local.manifest_path.is_file():
        local.check_complete()
