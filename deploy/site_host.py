"""A site host of a networked deployment: check the site's inputs, then become its
SuperNode (TLS to the SuperLink, authenticated with the site's own key)."""

from __future__ import annotations

import os
from pathlib import Path

from deploy.checks import check_node_key, probe_tls, resolve, split_address
from deploy.flower import environ, supernode_command
from deploy.readable import exec_readable
from shared.data.splits import load_manifest, site_manifest_path
from shared.errors import DatasetError, DeploymentError
from shared.nodeconfig import NodeConfig


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
) -> None:
    """Check, then run `flower-supernode` (never returns; deploy/readable.py)."""
    probe = check_site_inputs(site, address, data, ca, key)
    cmd = supernode_command(site_node_config(site, data, device), address, port, ca, key, max_retries)
    mode = "INSECURE" if ca is None else "TLS + node authentication"
    print(f"site {site}: SuperNode for {address} ({mode}; SuperLink: {probe}); data {data}", flush=True)
    home = os.environ.get("FLWR_HOME", str(Path(data).absolute() / "flwr-home"))
    exec_readable(cmd, environ(FLWR_HOME=home))
