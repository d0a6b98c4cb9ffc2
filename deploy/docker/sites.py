"""A compose file for the sites a config names (`fedattack deploy compose`): docker-compose.yml,
written for the study's four sites A-D, is the template; its site-a service is copied once
per site (the same command, the site's own name, key and volume), and the services that
list the sites (credentials, data-init, register, job) list the config's instead. The result
is one whole file, not an override: an override can add services but not remove site-c and
site-d from a three-site federation in Debian's docker-compose 1.29.

With `gpus`, each site's service reserves one GPU, round-robin over that many (site i on
GPU i mod gpus; FEDATTACK_GPU_<SITE> picks another), and the attack service all of them,
as docker-compose.gpu.yml does for the four sites."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from shared.errors import ConfigError
from shared.io import atomic_write

TEMPLATE_SITE = "A"
CONTAINER_CONFIG = "/app/configs/compose.yaml"  # where the services read the experiment config
SITE_SERVICE = re.compile(r"site-[a-z0-9_-]+")


class _NoAliases(yaml.SafeDumper):
    """Every service written out in full (the template's merge keys made shared objects)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def service_of(site: str) -> str:
    """The compose service (and volume) of a site: site-<name in lower case>."""
    return f"site-{site.lower()}"


def gpu_variable(site: str) -> str:
    return "FEDATTACK_GPU_" + re.sub(r"[^A-Z0-9]", "_", site.upper())


def _site_mounts(sites: Sequence[str]) -> list[str]:
    return [f"{service_of(s)}:/sites/{s}" for s in sites]


def _with_site_mounts(volumes: list[str], sites: Sequence[str]) -> list[str]:
    """`volumes` with the site volumes' mounts replaced by `sites`', where the first one was."""
    is_site = [bool(SITE_SERVICE.fullmatch(v.split(":", 1)[0])) for v in volumes]
    at = is_site.index(True) if any(is_site) else len(volumes)
    kept = [v for v, site in zip(volumes, is_site, strict=True) if not site]
    return [*kept[:at], *_site_mounts(sites), *kept[at:]]


def _replace_run(command: list[str], flag: str, values: list[str]) -> list[str]:
    """`command` with the arguments after `flag` (up to the next --option or the end)
    replaced by `values`."""
    if flag not in command:
        raise ConfigError(f"docker-compose.yml: expected {flag} in {' '.join(command[:4])} ...")
    i = command.index(flag) + 1
    j = i
    while j < len(command) and not command[j].startswith("--"):
        j += 1
    return [*command[:i], *values, *command[j:]]


def _site_service(template: dict[str, Any], site: str, index: int, gpus: int) -> dict[str, Any]:
    svc = copy.deepcopy(template)
    a = TEMPLATE_SITE
    swaps = {a: site, f"/sites/{a}": f"/sites/{site}"}
    command = []
    for arg in template["command"]:
        arg = swaps.get(arg, arg)
        arg = arg.replace(f"/sites/{a}/", f"/sites/{site}/").replace(f"site-{a}.key", f"site-{site}.key")
        command.append(arg)
    svc["command"] = command
    svc["volumes"] = _site_mounts([site])
    if gpus:
        device = {"driver": "nvidia", "capabilities": ["gpu"]}
        device["device_ids"] = [f"${{{gpu_variable(site)}:-{index % gpus}}}"]
        svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return svc


def compose_for_sites(
    template: dict[str, Any], sites: Sequence[str], config: Path | None = None, gpus: int = 0
) -> dict[str, Any]:
    """docker-compose.yml (loaded) rewritten for `sites`; `config` (a host path) mounted where
    the services read the experiment config; `gpus`: one GPU per site, round-robin."""
    if len(sites) < 2:
        raise ConfigError(f"data.sites: a federation needs at least 2 sites, the config names {len(sites)}")
    clash = sorted({s for s in sites if sum(service_of(o) == service_of(s) for o in sites) > 1})
    if clash:
        raise ConfigError(
            f"data.sites: {', '.join(clash)} differ only in case; compose names each site's service "
            f"and volume {service_of(clash[0])}: rename one"
        )
    doc = copy.deepcopy(template)
    services: dict[str, Any] = doc["services"]
    site_template = services.get(service_of(TEMPLATE_SITE))
    if site_template is None:
        raise ConfigError(f"docker-compose.yml: no {service_of(TEMPLATE_SITE)} service to copy for each site")
    for name in [n for n in services if SITE_SERVICE.fullmatch(n)]:
        del services[name]
        doc["volumes"].pop(name, None)
    for i, site in enumerate(sites):
        services[service_of(site)] = _site_service(site_template, site, i, gpus)
        doc["volumes"][service_of(site)] = {}

    creds = services["credentials"]
    creds["command"] = _replace_run(creds["command"], "--sites", list(sites))
    for name in ("credentials", "data-init"):
        services[name]["volumes"] = _with_site_mounts(services[name]["volumes"], sites)
    register = services["register"]
    keys = [f"/operator/site-{s}.key.pub" for s in sites]
    register["command"] = _replace_run(register["command"], "--public-key", keys)
    job = services["job"]
    job["depends_on"] = {
        **{k: v for k, v in job["depends_on"].items() if not SITE_SERVICE.fullmatch(k)},
        **{service_of(s): {"condition": "service_started"} for s in sites},
    }
    if gpus:
        device = {"driver": "nvidia", "capabilities": ["gpu"], "count": "all"}
        services["attack"]["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    if config is not None:
        mount = f"{config.resolve()}:{CONTAINER_CONFIG}:ro"
        for name in ("data-init", "job", "attack"):
            services[name]["volumes"] = [*services[name]["volumes"], mount]
    return doc


def write_compose(template: Path, sites: Sequence[str], out: Path, config: Path | None, gpus: int) -> Path:
    """Render the compose file for `sites` from `template` into `out` (whole, or not at all)."""
    try:
        loaded = yaml.safe_load(template.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(
            f"{template}: cannot read the compose template ({e}); run from the checkout"
        ) from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("services"), dict):
        raise ConfigError(f"{template}: not a compose file with services")
    doc = compose_for_sites(loaded, sites, config, gpus)
    doc = {k: v for k, v in doc.items() if not k.startswith("x-")}  # the template's anchors, merged in
    # compose resolves a build context against the file's own folder
    context = os.path.relpath(template.resolve().parent, out.resolve().parent)
    for svc in doc["services"].values():
        if isinstance(svc.get("build"), dict):
            svc["build"] = {**svc["build"], "context": context}
    header = (
        f"# Generated by `fedattack deploy compose` from {template.name} for sites "
        f"{', '.join(sites)}; do not edit: generate it again.\n"
    )
    atomic_write(out, header + yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, width=100))
    return out
