"""`docker-compose up` for real: the image built (deploy/docker/build-image.sh), the real
docker-compose.yml plus a small override that points the study at a tiny config, run on a
real engine until the attack service wrote its report; then what a user would check: the
report, a store whose every model verifies, TLS and node authentication, non-root
containers, one volume per site, a second `up` that is harmless, a site killed mid-run,
and an image that holds no credentials and no data. Needs a Docker engine (.ci/run starts
one); under CI a missing engine fails, elsewhere it skips."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from shared.store.folder import CheckpointStore
from tests.compose_stack import Stack, docker, engine_env, sh

pytestmark = pytest.mark.docker

IMAGE = "fedattack:latest"
SITES = ["site-a", "site-b", "site-c", "site-d"]
TINY = {
    "data.image_size": 80,
    "data.workers": 0,
    "federation.architectures": ["resnet50"],
    "federation.rounds": 1,
    "federation.round_timeout_s": 300,
    "training.batch_size": 8,
    "training.local_epochs": 1,
    "training.threads": 1,
    "synth.patients": 36,
    "synth.size": 96,
    "attack.max_images_per_dataset": 6,
}


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return engine_env()


@pytest.fixture(scope="module")
def image(env: dict[str, str]) -> str:
    have = subprocess.run([docker(), "image", "inspect", "fedattack-base:bookworm"], capture_output=True)
    base = os.environ.get("FEDATTACK_BASE") or (
        "fedattack-base:bookworm" if have.returncode == 0 else "python:3.11-slim-bookworm"
    )
    sh(["deploy/docker/build-image.sh", "--base", base, "--tag", IMAGE], env, timeout=1800)
    return IMAGE


@pytest.fixture(scope="module")
def stack(env: dict[str, str], image: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("compose-up")
    st = Stack(env, tmp, f"fedattackci{os.getpid()}", TINY)
    st.down()
    try:
        first = st.up_until_reported()
        print(f"compose study (tiny config): {first:.0f}s")
        yield st, tmp, first
    finally:
        st.tail()
        st.down()


def _verified_store(st: Stack, dest: Path) -> CheckpointStore:
    store = CheckpointStore(st.copy_out("attack", "/runs/checkpoints", dest))
    store.check_complete()
    for m in store.models():
        store.load(m.file, m.sha256)  # raises unless the bytes hash to the manifest's sha256
    return store


def test_up_runs_the_study_to_its_report(stack) -> None:
    st, tmp, _ = stack
    out = st.copy_out("attack", "/runs/attack", tmp / "attack")
    assert "resnet50" in (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert len(results["models"]) == 5  # 1 global + 4 locals
    store = _verified_store(st, tmp / "store")
    kinds = sorted((m.kind, m.site or "") for m in store.models())
    assert kinds == [("global", ""), ("local", "A"), ("local", "B"), ("local", "C"), ("local", "D")]


def test_superlink_ran_with_tls_and_node_auth(stack) -> None:
    st, _, _ = stack
    cmdlines = sh(
        [docker(), "exec", st.cid("superlink"), "python", "-c",
         "import glob; print(*(open(p, 'rb').read().replace(b'\\0', b' ').decode() "
         "for p in glob.glob('/proc/[0-9]*/cmdline')), sep='\\n')"],
        st.env,
    )  # fmt: skip
    link = next(ln for ln in cmdlines.splitlines() if "flower-superlink" in ln)
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth"):
        assert flag in link, link
    assert "--insecure" not in link
    assert "TLS + SuperNode authentication" in st.compose("logs", "--no-color", "superlink")
    for site in SITES:
        assert "TLS + node authentication" in st.compose("logs", "--no-color", site), site


def test_sites_network_reaches_only_the_fleet_api(stack) -> None:
    """From a site's container (the federation network, holding ca.crt): the Control API
    behind the published port answers 403, the SuperLink's own port is closed, and the
    SuperLink runs with the SuperExec secret, the signed app and trusted entities at the sites."""
    st, _, _ = stack
    probe = (
        "import socket,ssl,urllib.request,urllib.error\n"
        "ctx = ssl.create_default_context(cafile='/sites/A/ca.crt')\n"
        "req = urllib.request.Request('https://superlink:9093/v1/control/list-runs', b'', "
        "{'Content-Type': 'application/protobuf'}, method='POST')\n"
        "try:\n    print(urllib.request.urlopen(req, context=ctx, timeout=20).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
        "s = socket.socket(); s.settimeout(5); print(s.connect_ex(('superlink', 9091)) != 0)\n"
    )
    out = sh([docker(), "exec", st.cid("site-a"), "python", "-c", probe], st.env).split()
    assert out == ["403", "True"], out
    link = st.compose("logs", "--no-color", "superlink")
    assert "on 127.0.0.1:9091 for the operator's tools" in link and "(nothing else)" in link, link[-2000:]
    assert "runs apps signed by a key in /sites/A/trusted-entities.yaml" in st.compose(
        "logs", "--no-color", "site-a"
    )


def test_service_logs_read_as_plain_lines(stack) -> None:
    """What `docker compose up` shows: Flower's lines without colour escapes and without
    the empty "INFO :" lines between them (deploy/flower/readable.py), the job's round progress."""
    st, _, _ = stack
    for service in ["superlink", *SITES]:
        log = st.compose("logs", "--no-color", service)
        assert "\x1b[" not in log, service
        lines = [ln.split("|", 1)[-1].strip() for ln in log.splitlines()]
        assert not [ln for ln in lines if ln.rstrip(":").strip() in ("INFO", "WARNING")], service
    assert "INFO: [RUN" in st.compose("logs", "--no-color", "site-a")
    assert "round 0 done" in st.compose("logs", "--no-color", "job")


def test_containers_run_as_non_root_and_sites_mount_only_their_volume(stack) -> None:
    st, _, _ = stack
    project = st.project
    for service in ["superlink", *SITES, "credentials", "data-init", "job", "attack"]:
        assert st.inspect(service)["Config"]["User"] == "fedattack", service
    for site in SITES:
        assert sh([docker(), "exec", st.cid(site), "id", "-u"], st.env).strip() == "10001"
        mounts = st.inspect(site)["Mounts"]
        assert [(m["Type"], m.get("Name"), m["Destination"]) for m in mounts] == [
            ("volume", f"{project}_{site}", f"/sites/{site[-1].upper()}")
        ], site


def test_a_second_up_is_harmless(stack) -> None:
    st, tmp, _ = stack
    before = _verified_store(st, tmp / "store-1")
    started = st.inspect("attack")["State"]["StartedAt"]
    st.up_until_reported()
    assert st.inspect("attack")["State"]["StartedAt"] != started  # the study really ran again
    register = st.compose("logs", "--no-color", "register")
    assert register.count("already registered") == 4, register  # same keys, not remade
    after = _verified_store(st, tmp / "store-2")
    assert len(before.models()) == len(after.models()) == 5  # a fresh study, not a mixed store


def test_image_holds_no_credentials_and_no_data(env: dict[str, str], image: str) -> None:
    # outside the installed packages (pydicom ships its own sample .dcm files), nothing
    # that looks like a key, a certificate of ours, a DICOM, a manifest or a wheel
    script = (
        "find / -xdev \\( -path /proc -o -path /opt/venv/lib -o -path /usr/share/python-wheels \\) "
        "-prune -o \\( -name '*.key' -o -name 'site-[A-D].key*' -o -name 'server.crt' -o -name 'ca.crt' "
        "-o -name '*.dcm' -o -name 'manifest.json' -o -name '*.whl' -o -name 'wheelhouse' \\) -print; "
        "find /credentials /state /work /data /runs /sites -type f -print; "
        "find /home/fedattack/.flwr -type f ! -name source -print"
    )
    found = sh([docker(), "run", "--rm", image, "sh", "-c", script], env, timeout=300).split()
    assert found == [], found
    history = sh([docker(), "history", "--no-trunc", image], env)
    assert "COPY deploy/docker/wheelhouse" not in history


@pytest.mark.parametrize("min_sites", [3, 4])
def test_a_site_killed_mid_run(env: dict[str, str], image: str, tmp_path: Path, min_sites: int) -> None:
    """site-d killed once the job reports round 0 (the sites' validation of a round comes
    back with the next round's training, so the kill lands in the fine-tune step): with
    min_sites 3 the federation completes on three sites; with 4 the job fails, non-zero,
    saying how many sites replied, and `up` exits non-zero instead of hanging."""
    config = {**TINY, "federation.min_sites": min_sites, "federation.round_timeout_s": 180}
    st = Stack(env, tmp_path, f"fedattackkill{min_sites}x{os.getpid()}", config)
    st.down()
    up = st.popen_up()
    try:
        deadline = time.monotonic() + 600
        while "round 0 done" not in (
            st.compose("logs", "--no-color", "job", check=False) if st.cid("job") else ""
        ):
            assert time.monotonic() < deadline and up.poll() in (None, 0), st.tail()
            time.sleep(3)
        sh([docker(), "kill", st.cid("site-d")], env)
        code = st.wait_exit("job", 600)
        log = st.compose("logs", "--no-color", "job")
        if min_sites == 3:
            # the federation completes on three sites: the quorum's study is complete, and
            # the manifest names site D's missing local model
            assert "run complete" in log, st.tail()
            assert code == 0, st.tail()
            manifest = json.loads(
                sh([docker(), "exec", st.cid("superlink"), "cat", "/runs/checkpoints/manifest.json"], env)
            )
            assert sorted(m["site"] or "" for m in manifest["models"]) == ["", "A", "B", "C"]
            assert manifest["complete"] is True and manifest["missing"] == ["resnet50-local-D"]
        else:
            assert code != 0, st.tail()
            assert "of the required 4 sites" in log or "required SuperNodes" in log, log[-3000:]
            assert up.wait(timeout=120) != 0  # `up` stops on the failed job instead of hanging
    finally:
        if up.poll() is None:
            up.kill()
        st.tail()
        st.down()
