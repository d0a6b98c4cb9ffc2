"""Flower's own commands, built in one place: `flower-superlink`, `flower-supernode` and
`flower-superexec` command lines (insecure on loopback, or TLS + SuperNode
authentication; locked down: process isolation with the SuperExec shared secret, signed
apps only at the sites), and the environment every Flower process gets."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.config.node import NodeConfig

BIN = Path(sys.executable).parent
CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.crt", "server.key"


def flwr_bin(name: str) -> str:
    """A Flower executable beside this interpreter (an unactivated venv), else by name."""
    p = BIN / name
    return str(p) if p.exists() else name


def path_with_bin() -> str:
    """PATH with this interpreter's bin first: Flower starts `flower-superexec`,
    `flwr-serverapp` and `flwr-clientapp` by name, also from an unactivated venv."""
    return os.pathsep.join([str(BIN), os.environ.get("PATH", "")])


def environ(**extra: str) -> dict[str, str]:
    """This process's environment with Flower's executables first on PATH, plus `extra`.
    Flower's telemetry (events sent to telemetry.flower.ai) is off: nothing about a
    hospital's runs leaves its hosts unasked."""
    return {**os.environ, "PATH": path_with_bin(), "FLWR_TELEMETRY_ENABLED": "0", **extra}


def new_superexec_secret(folder: Path) -> Path:
    """A fresh random SuperExec shared secret in `folder`/superexec.secret (0600), made at
    every start: only the SuperLink or SuperNode and the SuperExec started beside it read
    it; other local users cannot take the tasks (models, configs) off their Runtime API."""
    from shared.io import atomic_write

    path = Path(folder) / "superexec.secret"
    atomic_write(path, secrets.token_hex(32), private=True)
    return path


@dataclass(frozen=True)
class Lockdown:
    """Process isolation with the SuperExec shared secret; at a SuperNode, also the
    trusted entities whose signature an app must carry (None: unsigned apps run)."""

    secret: Path
    trusted_entities: Path | None = None


def superexec_command(runtime_address: str, secret: Path, ca: Path | None) -> list[str]:
    """`flower-superexec` for a SuperLink or SuperNode started with process isolation: it
    takes the tasks off their Runtime API (authenticated with the shared secret) and runs
    the ServerApp or ClientApp processes. `ca` None: the Runtime API is plain HTTP on
    loopback (a SuperNode's)."""
    cmd = [
        flwr_bin("flower-superexec"),
        "--runtime-api-address",
        runtime_address,
        "--superexec-auth-secret-file",
        str(Path(secret).absolute()),
    ]
    return [*cmd, "--insecure"] if ca is None else [*cmd, "--root-certificates", str(Path(ca).absolute())]


def superlink_command(
    database: Path | str, host: str, port: int, credentials: Path | None, lockdown: Lockdown | None = None
) -> list[str]:
    """`flower-superlink` keeping its state in `database` (an SQLite file, or Flower's
    ":flwr-in-memory:"); `credentials` (ca.crt, server.crt, server.key) turns on TLS and
    SuperNode authentication, None means insecure (loopback experiments only). With
    `lockdown`, its SuperExec is a process of its own (superexec_command) holding the
    shared secret."""
    cmd = [
        flwr_bin("flower-superlink"),
        *_isolation(lockdown),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        database if isinstance(database, str) else str(Path(database).absolute()),
    ]
    if credentials is None:
        return [*cmd, "--insecure"]
    c = Path(credentials).absolute()
    return [
        *cmd,
        "--ssl-ca-certfile",
        str(c / CA_CERT),
        "--ssl-certfile",
        str(c / SERVER_CERT),
        "--ssl-keyfile",
        str(c / SERVER_KEY),
        "--enable-supernode-auth",
    ]


def _isolation(lockdown: Lockdown | None) -> list[str]:
    if lockdown is None:
        return ["--isolation", "subprocess"]
    return ["--isolation", "process", "--superexec-auth-secret-file", str(Path(lockdown.secret).absolute())]


def supernode_command(
    node: NodeConfig,
    superlink: str,
    port: int,
    ca: Path | None = None,
    key: Path | None = None,
    max_retries: int | None = None,
    lockdown: Lockdown | None = None,
) -> list[str]:
    """`flower-supernode` for one site; `ca` None means insecure, `key` is the site's
    authentication key (required by a SuperLink with node authentication). With
    `lockdown`, its SuperExec is a process of its own holding the shared secret, and it
    runs only apps signed by one of `lockdown.trusted_entities`."""
    cmd = [
        flwr_bin("flower-supernode"),
        "--superlink",
        superlink,
        "--port",
        str(port),
        "--node-config",
        node.to_flower(),
    ]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if lockdown is not None:
        cmd += _isolation(lockdown)
        if lockdown.trusted_entities is not None:
            cmd += ["--trusted-entities", str(Path(lockdown.trusted_entities).absolute())]
    if ca is None:
        return [*cmd, "--insecure"]
    cmd += ["--root-certificates", str(Path(ca).absolute())]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(key).absolute())]
    return cmd
