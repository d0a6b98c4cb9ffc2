"""A site host of a networked deployment: check the site's inputs, then run its SuperNode
(TLS to the SuperLink, authenticated with the site's own key). With TLS and trusted
entities it is locked down: it runs only apps signed by a key in the site's trusted-entities.yaml, and its
SuperExec is a process of its own holding a shared secret, so that no other process on
the host can take the site's tasks (the global model, the run's settings) off its
Runtime API on loopback."""

from __future__ import annotations

import os
from pathlib import Path

from deploy.flower.commands import (
    Lockdown,
    environ,
    new_superexec_secret,
    superexec_command,
    supernode_command,
)
from deploy.flower.readable import Child, exec_readable, run_together
from deploy.hosts.appsign import check_trusted_entities
from deploy.hosts.checks import check_node_key, probe_tls, resolve, split_address
from shared.config.node import NodeConfig
from shared.data.manifest import load_manifest, site_manifest_path
from shared.errors import DatasetError, DeploymentError


def site_node_config(site: str, data: Path, device: str = "") -> NodeConfig:
    """The node config of a site whose folder holds its manifest and images (as
    `fedattack deploy prepare-data` writes it); the cache goes beside them."""
    data = Path(data).absolute()
    return NodeConfig(site, site_manifest_path(data, site), data / "cache", data, device)


def check_site_inputs(site: str, address: str, data: Path, ca: Path | None, key: Path | None) -> str:
    """Everything a site can check before it dials: its shard, its key, the SuperLink's
    name and, when the SuperLink is up, its certificate. Returns the TLS probe's result."""
    manifest_path = site_manifest_path(Path(data), site)
    manifest = load_manifest(manifest_path, Path(data))
    if not manifest.name.endswith(f"_{site}"):
        raise DatasetError(f"{manifest_path}: a manifest of {manifest.name}, not of site {site}")
    first = next((s for part in manifest.parts.values() for s in part), None)
    if first is None or not (Path(data) / first.relpath).is_file():
        raise DatasetError(
            f"{data}: the images of {manifest_path} are not there (looked for "
            f"{first.relpath if first else 'any image'}); mount the site's data folder"
        )
    host, _ = split_address(address)
    if ca is None:
        resolve(host)
        return "insecure"
    if key is None:
        raise DeploymentError(f"site {site}: no --key; the SuperLink requires SuperNode authentication")
    check_node_key(key)
    return probe_tls(address, ca)


def start_supernode(
    site: str,
    address: str,
    data: Path,
    ca: Path | None,
    key: Path | None,
    device: str = "",
    port: int = 9094,
    max_retries: int | None = None,
    trusted_entities: Path | None = None,
) -> None:
    """Check, then run `flower-supernode` (never returns; deploy/flower/readable.py); with TLS and
    `trusted_entities`, locked down (apps signed by those keys only; a SuperExec of its own
    with the shared secret)."""
    probe = check_site_inputs(site, address, data, ca, key)
    node = site_node_config(site, data, device)
    home = Path(os.environ.get("FLWR_HOME", str(Path(data).absolute() / "flwr-home")))
    if ca is None or trusted_entities is None:
        cmd = supernode_command(node, address, port, ca, key, max_retries)
        mode = "INSECURE" if ca is None else "TLS + node authentication, not locked down"
        print(f"site {site}: SuperNode for {address} ({mode}; SuperLink: {probe}); data {data}", flush=True)
        exec_readable(cmd, environ(FLWR_HOME=str(home)))
    trusted = Path(trusted_entities)
    check_trusted_entities(trusted)
    home.mkdir(parents=True, exist_ok=True)
    lockdown = Lockdown(new_superexec_secret(home), trusted)
    apps = f"apps signed by a key in {trusted}"
    print(
        f"site {site}: SuperNode for {address} (TLS + node authentication; SuperLink: {probe}); "
        f"runs {apps}; data {data}",
        flush=True,
    )
    env = environ(FLWR_HOME=str(home))
    run_together(
        [
            Child("supernode", supernode_command(node, address, port, ca, key, max_retries, lockdown), env),
            Child("superexec", superexec_command(f"127.0.0.1:{port}", lockdown.secret, None), env),
        ]
    )
