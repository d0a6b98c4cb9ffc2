"""Flower's own commands, built in one place: `flower-superlink` and `flower-supernode`
command lines (insecure on loopback, or TLS + SuperNode authentication), and the
environment every Flower process gets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from shared.nodeconfig import NodeConfig

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
    """This process's environment with Flower's executables first on PATH, plus `extra`."""
    return {**os.environ, "PATH": path_with_bin(), **extra}


def superlink_command(database: Path, host: str, port: int, credentials: Path | None) -> list[str]:
    """`flower-superlink`; `credentials` (ca.crt, server.crt, server.key) turns on TLS and
    SuperNode authentication, None means insecure (loopback experiments only)."""
    cmd = [
        flwr_bin("flower-superlink"),
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(Path(database).absolute()),
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


def supernode_command(
    node: NodeConfig,
    superlink: str,
    port: int,
    ca: Path | None = None,
    key: Path | None = None,
    max_retries: int | None = None,
) -> list[str]:
    """`flower-supernode` for one site; `ca` None means insecure, `key` is the site's
    authentication key (required by a SuperLink with node authentication)."""
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
    if ca is None:
        return [*cmd, "--insecure"]
    cmd += ["--root-certificates", str(Path(ca).absolute())]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(key).absolute())]
    return cmd
