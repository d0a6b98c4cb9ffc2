"""docker-compose.yml and its override files: valid in every combination, for Debian's
docker-compose 1.29 and for Compose v2's own binary (`make compose-v2`; both validate
without an engine), and every service runs a project command
that parses with the project's own CLI (the multi-host test runs those same commands)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from cli.main import build_parser
from tests.conftest import REPO

OVERRIDES = ["docker-compose.gpu.yml", "docker-compose.insecure.yml"]
COMBINATIONS = [
    ["docker-compose.yml", *c]
    for n in range(len(OVERRIDES) + 1)
    for c in itertools.combinations(OVERRIDES, n)
]


def _need(exe: str | None, missing: str, how: str) -> str:
    """The tool's path; under CI a missing tool fails the test, elsewhere it skips it."""
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing; {how}")
        pytest.skip(f"{missing} not installed ({how})")
    return exe


def _config_q(exe: str, files: list[str]) -> subprocess.CompletedProcess[str]:
    args = [a for f in files for a in ("-f", f)]
    return subprocess.run([exe, *args, "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=60)


def _docker_compose() -> str:
    how = ".ci/run installs it: apt-get install docker-compose"
    return _need(shutil.which("docker-compose"), "docker-compose", how)


@pytest.mark.integration
@pytest.mark.parametrize("files", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_compose_files_validate(files: list[str]) -> None:
    res = _config_q(_docker_compose(), files)
    assert res.returncode == 0, res.stderr


@pytest.mark.integration
@pytest.mark.parametrize("files", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_compose_files_validate_for_compose_v2(files: list[str]) -> None:
    """The README's `docker compose` is the v2 plugin: its schema and loader (compose-go)
    accept the files, with no warning (an obsolete `version:` key, an unknown field)."""
    v2 = REPO / ".cache" / "compose-v2" / "docker-compose"
    exe = _need(str(v2) if v2.exists() else None, str(v2), "`make test` fetches it: make compose-v2")
    res = _config_q(exe, files)
    assert res.returncode == 0, res.stderr
    assert "warn" not in res.stderr.lower(), res.stderr


def _merged(files: list[str]) -> dict:
    res = subprocess.run(
        [_docker_compose(), *[a for f in files for a in ("-f", f)], "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


@pytest.mark.integration
@pytest.mark.parametrize("files", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_every_service_runs_a_project_command(files: list[str]) -> None:
    services = _merged(files)["services"]
    expected = {"superlink", "site-a", "site-b", "site-c", "site-d", "data-init", "job", "attack"}
    assert expected <= set(services)
    for name, svc in services.items():
        cmd = svc["command"]
        assert cmd[0] == "fedattack", name
        build_parser().parse_args(cmd[1:])  # exits (fails the test) on an unknown option


@pytest.mark.integration
def test_secure_by_default_and_insecure_only_by_override() -> None:
    default = _merged(["docker-compose.yml"])["services"]
    for name, svc in default.items():
        assert "--insecure" not in svc["command"], name
    for site in "abcd":
        cmd = default[f"site-{site}"]["command"]
        assert "--root-certificates" in cmd and "--key" in cmd
        # a site mounts its own volume and nothing else: no other site's data, no CA key
        assert [v.split(":")[0] for v in default[f"site-{site}"]["volumes"]] == [f"site-{site}"]
    assert "--credentials" in default["superlink"]["command"]
    insecure = _merged(["docker-compose.yml", "docker-compose.insecure.yml"])["services"]
    assert "--insecure" in insecure["superlink"]["command"]
    for site in "abcd":
        assert "--trusted-entities" not in insecure[f"site-{site}"]["command"]


def _volumes(svc: dict) -> set[str]:
    return {str(v).split(":")[0] if isinstance(v, str) else v["source"] for v in svc.get("volumes", [])}


@pytest.mark.integration
def test_locked_down_by_default() -> None:
    """Only the operator's tools reach the SuperLink's Control API (they share its network
    namespace and dial its loopback), the sites reach only the Fleet proxy and run only
    the signed app, and the keys that sign stay in a volume no long-running service mounts."""
    services = _merged(["docker-compose.yml"])["services"]
    link = services["superlink"]["command"]
    assert link[link.index("--credentials") + 1] == "/server"
    assert link[link.index("--app") + 1] == "/server/app"
    # the SuperLink's ServerApp: the public split alone (feddf distils on it), never a site's
    # shard or a test set, and never the raw data
    assert _volumes(services["superlink"]) == {
        "server",
        "superlink-state",
        "checkpoints",
        "server-public",
        "server-cache",
    }
    assert "server-public:/runs/splits:ro" in services["superlink"]["volumes"]
    init = services["data-init"]["command"]
    assert init[init.index("--server-dir") + 1] == "/server-public"
    readers = sorted(n for n, svc in services.items() if "server-public" in _volumes(svc))
    assert readers == ["data-init", "superlink"], readers
    for name in ("register", "job"):
        svc = services[name]
        assert svc["network_mode"] == "service:superlink", name
        cmd = svc["command"]
        assert cmd[cmd.index("--superlink") + 1] == "127.0.0.1:9091", name
        assert cmd[cmd.index("--root-certificates") + 1] == "/operator/ca.crt", name
        assert "credentials" not in _volumes(svc), name
    assert "--signed-app" in services["job"]["command"]
    for site in "ABCD":
        cmd = services[f"site-{site.lower()}"]["command"]
        assert cmd[cmd.index("--superlink") + 1] == "superlink:9093"
        assert cmd[cmd.index("--trusted-entities") + 1] == f"/sites/{site}/trusted-entities.yaml"
    holders = sorted(n for n, svc in services.items() if "credentials" in _volumes(svc))
    assert holders == ["credentials"]  # ca.key and app-signing.key: the one-shot that made them
    (port,) = services["superlink"]["ports"]  # compose 1.29 prints the short form
    if isinstance(port, dict):
        port = f"{port['host_ip']}:{port['published']}:{port['target']}"
    assert port.split("/")[0] == "127.0.0.1:9093:9093", port


@pytest.mark.integration
@pytest.mark.parametrize("files", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_every_service_is_hardened(files: list[str]) -> None:
    """No capabilities, no privilege gain, a read-only root with tmpfs where a service
    writes outside its volumes; the services that only read and write volumes (the attack,
    the credentials and data one-shots) have no network at all. tests/test_compose_up.py
    checks the same on the running containers."""
    services = _merged(files)["services"]
    for name, svc in services.items():
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["read_only"] is True, name
        assert sorted(t.split(":")[0] for t in svc["tmpfs"]) == ["/home/fedattack", "/tmp"], name
    for name in ("attack", "credentials", "data-init"):
        assert services[name]["network_mode"] == "none", name
        assert "networks" not in services[name], name


def _rendered(files: list[str], env: dict[str, str]) -> dict:
    """`config` as Compose v2 renders it (its binary from `make compose-v2`), else 1.29's."""
    v2 = REPO / ".cache" / "compose-v2" / "docker-compose"
    exe = str(v2) if v2.exists() else _docker_compose()
    args = [a for f in files for a in ("-f", f)]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("FEDATTACK_GPU_")} | env
    res = subprocess.run(
        [exe, *args, "config"], cwd=REPO, capture_output=True, text=True, timeout=60, env=run_env
    )
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)["services"]


def _gpus(service: dict) -> dict:
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    return device


@pytest.mark.integration
def test_gpu_override_pins_each_site_to_its_own_gpu_and_the_attack_to_all() -> None:
    files = ["docker-compose.yml", "docker-compose.gpu.yml"]
    services = _rendered(files, {})
    pinned = {s: _gpus(services[f"site-{s.lower()}"])["device_ids"] for s in "ABCD"}
    assert pinned == {"A": ["0"], "B": ["1"], "C": ["2"], "D": ["3"]}
    assert "device_ids" not in _gpus(services["attack"]) and _gpus(services["attack"])["count"] in ("all", -1)
    two = _rendered(files, {"FEDATTACK_GPU_C": "0", "FEDATTACK_GPU_D": "1"})  # the documented mapping
    assert [_gpus(two[f"site-{s}"])["device_ids"] for s in "abcd"] == [["0"], ["1"], ["0"], ["1"]]
    assert "deploy" not in _rendered(["docker-compose.yml"], {})["site-a"]


@pytest.mark.unit
def test_dockerfile_builds_from_project_files_as_non_root() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY"):
            src = line.split()[1:-1]
            assert all(list(REPO.glob(s.rstrip("/"))) for s in src), line
    assert "USER fedattack" in text and "ARG BASE=python:3.11-slim-bookworm" in text
    assert "FROM ${BASE}" in text and "/opt/venv" in text and "FLWR_DISABLE_UPDATE_CHECK=1" in text
    # the wheelhouse reaches the build as a bind mount (no layer); the image never copies it
    assert "--mount=type=bind,source=deploy/docker/wheelhouse" in text
    assert not any(ln.startswith("COPY") and "wheelhouse" in ln for ln in text.splitlines())
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "data"} <= set(ignored)


@pytest.mark.unit
def test_the_project_pins_what_the_image_installs() -> None:
    from deploy.docker.wheelhouse import requirements

    reqs = requirements()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs and "setuptools>=68" in reqs


@pytest.mark.integration  # pip resolves the wheelhouse (a subprocess)
def test_an_incomplete_wheelhouse_is_named_before_any_build(tmp_path) -> None:
    from deploy.docker.wheelhouse import check_wheelhouse
    from shared.errors import DeploymentError

    with pytest.raises(DeploymentError, match=r"holds no wheels.*fedattack deploy wheelhouse"):
        check_wheelhouse(tmp_path)
    (tmp_path / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"")
    with pytest.raises(DeploymentError, match=r"incomplete .*flwr"):
        check_wheelhouse(tmp_path)


@pytest.mark.unit
def test_the_job_packs_the_app_from_fedattack_app_dir(tmp_path, monkeypatch) -> None:
    from deploy.flower.connection import PROJECT_DIR, app_dir
    from shared.errors import DeploymentError

    monkeypatch.delenv("FEDATTACK_APP_DIR", raising=False)
    assert app_dir() == PROJECT_DIR  # a source checkout
    monkeypatch.setenv("FEDATTACK_APP_DIR", str(tmp_path))
    with pytest.raises(DeploymentError, match=r"no pyproject.toml.*FEDATTACK_APP_DIR"):
        app_dir()
    (tmp_path / "pyproject.toml").write_text("")
    assert app_dir() == tmp_path


@pytest.mark.integration
def test_build_script_names_a_missing_engine_and_base(tmp_path) -> None:
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\n[ "$1" = info ] && exit 0\nexit 1\n')
    fake.chmod(0o755)
    script = str(REPO / "deploy" / "docker" / "build-image.sh")
    res = subprocess.run([script, "--base", "nope:1"], env={**os.environ, "DOCKER": "/bin/false"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode != 0 and "no Docker engine answers" in res.stderr
    res = subprocess.run([script, "--base", "nope:1"], env={**os.environ, "DOCKER": str(fake)},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode != 0 and "base image nope:1" in res.stderr and "base-image.sh" in res.stderr


def _sites_compose(tmp_path, datasets: dict[str, list[str]], gpus: int = 0):
    """configs/compose.yaml with other sites, and the compose file `fedattack deploy
    compose` writes for it (as a user runs it, from the checkout)."""
    raw = yaml.safe_load((REPO / "configs" / "compose.yaml").read_text())
    for name, sites in datasets.items():
        raw["data"]["datasets"][name]["sites"] = sites
    raw["data"]["datasets"] = {n: d for n, d in raw["data"]["datasets"].items() if n in datasets}
    raw["federation"]["min_sites"] = sum(map(len, datasets.values()))
    cfg, out = tmp_path / "sites.yaml", tmp_path / "docker-compose.sites.yml"
    cfg.write_text(yaml.safe_dump(raw))
    argv = ["deploy", "compose", "--config", str(cfg), "--out", str(out), "--gpus", str(gpus)]
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert f"{out}: {raw['federation']['min_sites']} site services" in res.stdout
    return cfg, out


@pytest.mark.integration
def test_a_compose_file_for_six_sites_on_two_gpus(tmp_path) -> None:
    """Six sites (NIH at A, B, E; RSNA at C, D, F): one SuperNode service and one volume per
    site, each with its own name, key and data, pinned round-robin to the two GPUs; the
    credentials, data and register one-shots and the job list all six; the config is
    mounted where the services read it; valid for both Composes, every service hardened."""
    cfg, out = _sites_compose(tmp_path, {"nih": ["A", "B", "E"], "rsna": ["C", "D", "F"]}, gpus=2)
    assert _config_q(_docker_compose(), [str(out)]).returncode == 0
    v2 = REPO / ".cache" / "compose-v2" / "docker-compose"
    if v2.exists():
        res = _config_q(str(v2), [str(out)])
        assert res.returncode == 0 and "warn" not in res.stderr.lower(), res.stderr
    services = _rendered([str(out)], {})
    sites = ["A", "B", "C", "D", "E", "F"]
    assert sorted(n for n in services if n.startswith("site-")) == [f"site-{s.lower()}" for s in sites]
    for i, site in enumerate(sites):
        svc = services[f"site-{site.lower()}"]
        cmd = svc["command"]
        build_parser().parse_args(cmd[1:])
        assert cmd[cmd.index("--site") + 1] == site and cmd[cmd.index("--data") + 1] == f"/sites/{site}"
        assert cmd[cmd.index("--key") + 1] == f"/sites/{site}/site-{site}.key"
        assert _volumes(svc) == {f"site-{site.lower()}"}  # its own volume, nothing else
        assert _gpus(svc)["device_ids"] == [str(i % 2)]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    creds = services["credentials"]["command"]
    assert creds[creds.index("--sites") + 1 : creds.index("--sites-dir")] == sites
    register = services["register"]["command"]
    assert register[register.index("--public-key") + 1 :] == [f"/operator/site-{s}.key.pub" for s in sites]
    assert {n for n in services["job"]["depends_on"] if n.startswith("site-")} == {
        f"site-{s.lower()}" for s in sites
    }
    for name in ("credentials", "data-init"):
        assert {f"site-{s.lower()}" for s in sites} <= _volumes(services[name]), name
    for name in ("data-init", "job", "attack"):
        assert str(cfg) in _volumes(services[name]), name
    assert _gpus(services["attack"])["count"] in ("all", -1)
    for name, svc in services.items():
        assert svc["command"][0] == "fedattack", name
        build_parser().parse_args(svc["command"][1:])


@pytest.mark.integration
def test_the_compose_file_for_the_four_sites_is_docker_compose_yml(tmp_path) -> None:
    """Generated for configs/compose.yaml's own sites, the file is docker-compose.yml (less
    the config's mount); for two sites, no trace of the other two is left."""
    raw = yaml.safe_load((REPO / "configs" / "compose.yaml").read_text())
    datasets = {n: d["sites"] for n, d in raw["data"]["datasets"].items()}
    cfg, out = _sites_compose(tmp_path, datasets)
    made = _merged([str(out)])
    for name in ("data-init", "job", "attack"):
        made["services"][name]["volumes"] = [
            v for v in made["services"][name]["volumes"] if not str(v).startswith(str(cfg))
        ]
    assert made == _merged(["docker-compose.yml"])
    (tmp_path / "two").mkdir()
    _, two = _sites_compose(tmp_path / "two", {"nih": ["A"], "rsna": ["C"]})
    text = two.read_text()
    assert "site-b" not in text and "site-d" not in text and "/sites/B" not in text
    assert sorted(n for n in _merged([str(two)])["services"] if n.startswith("site-")) == ["site-a", "site-c"]


@pytest.mark.unit
def test_sites_that_differ_only_in_case_are_refused_by_name() -> None:
    from deploy.docker.sites import compose_for_sites
    from shared.errors import ConfigError

    template = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    with pytest.raises(ConfigError, match=r"A, a differ only in case.*site-a: rename one"):
        compose_for_sites(template, ["A", "B", "a"])
