"""The README's container commands for real: `make image` (the base, the wheelhouse, the
image) and `deploy/compose-study.sh` (the real docker-compose.yml plus a small override
that points the study at a tiny config), run as the README writes them on a real engine
until the report; then what a user would check: the report, a store whose every model
verifies, nothing left running, TLS and node authentication, hardened non-root
containers, one volume per site, a second study that is harmless, a site killed mid-run,
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
from tests.compose_stack import Stack, build_image, docker, engine_env, sh
from tests.conftest import REPO

pytestmark = pytest.mark.docker

SITES = ["site-a", "site-b", "site-c", "site-d"]
TINY = {
    "data.image_size": 80,
    "data.workers": 0,
    "federation.architectures": ["resnet18"],
    "federation.rounds": 1,
    "federation.round_timeout_s": 300,
    "training.batch_size": 8,
    "training.local_epochs": 1,
    "training.threads": 1,
    "synth.patients": 36,
    "synth.size": 96,
    "attack.max_images_per_dataset": 6,
}


# Run inside the containers while the study runs (every service up, the run submitted):
CMDLINES = (
    "import glob; print(*(open(p, 'rb').read().replace(b'\\0', b' ').decode() "
    "for p in glob.glob('/proc/[0-9]*/cmdline')), sep='\\n')"
)
FROM_A_SITE = (
    "import socket,ssl,urllib.request,urllib.error\n"
    "ctx = ssl.create_default_context(cafile='/sites/A/ca.crt')\n"
    "req = urllib.request.Request('https://superlink:9093/v1/control/list-runs', b'', "
    "{'Content-Type': 'application/protobuf'}, method='POST')\n"
    "try:\n    print(urllib.request.urlopen(req, context=ctx, timeout=20).status)\n"
    "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    "s = socket.socket(); s.settimeout(5); print(s.connect_ex(('superlink', 9091)) != 0)\n"
)
WRITES = "import os; open('/tmp/x', 'w'); print(os.getuid()); open('/app/x', 'w')"


def observe(st: Stack) -> dict[str, subprocess.CompletedProcess]:
    """What the running containers show from inside (called once the job submitted its run)."""

    def run(service: str, *cmd: str) -> subprocess.CompletedProcess:
        argv = [docker(), "exec", st.cid(service), *cmd]
        return subprocess.run(argv, env=st.env, capture_output=True, text=True, timeout=60)

    return {
        "cmdlines": run("superlink", "python", "-c", CMDLINES),
        "from-a-site": run("site-a", "python", "-c", FROM_A_SITE),
        "writes": run("site-a", "python", "-c", WRITES),
        "status": run("site-a", "cat", "/proc/self/status"),
    }


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return engine_env()


@pytest.fixture(scope="module")
def image(env: dict[str, str]) -> str:
    return build_image(env)


@pytest.fixture(scope="module")
def stack(env: dict[str, str], image: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("compose-up")
    st = Stack(env, tmp, f"fedattackci{os.getpid()}", TINY)
    st.down()
    try:
        live: dict[str, subprocess.CompletedProcess] = {}
        first, printed = st.study_until_reported(lambda: live.update(observe(st)))
        print(f"compose study (tiny config): {first:.0f}s")
        yield st, tmp, printed, live
    finally:
        st.tail()
        st.down()


def _verified_store(st: Stack, dest: Path) -> CheckpointStore:
    store = CheckpointStore(st.copy_out("attack", "/runs/checkpoints", dest))
    store.check_complete()
    for m in store.models():
        store.load(m.file, m.sha256)  # raises unless the bytes hash to the manifest's sha256
    return store


def test_the_study_ends_with_the_report_and_nothing_running(stack) -> None:
    """README's study command returned 0 after the report, printed the job's round lines
    as they came, copied the report out, and left no container running; the report
    command of the docs reads the results volume without starting any service."""
    st, tmp, printed, _ = stack
    assert "[resnet18] round 1 done (sites A,B,C,D)" in printed, printed[-3000:]
    report = (st.report / "report.md").read_text()
    assert "resnet18" in report
    results = json.loads((st.report / "results.json").read_text())
    assert len(results["models"]) == 5  # 1 global + 4 locals
    store = _verified_store(st, tmp / "store")
    kinds = sorted((m.kind, m.site or "") for m in store.models())
    assert kinds == [("global", ""), ("local", "A"), ("local", "B"), ("local", "C"), ("local", "D")]
    assert st.running() == []
    read = st.compose("run", "--rm", "--no-deps", "--entrypoint", "cat", "attack", "/runs/attack/report.md")
    assert read == report
    assert st.running() == []  # nothing was started to read it


def test_every_container_is_hardened(stack) -> None:
    """What docker-compose.yml asks for, as the engine ran it: no capabilities, no
    privilege gain, a read-only root with tmpfs, uid 10001; no network for the services
    that only read and write volumes."""
    st, _, _, live = stack
    for service in ["superlink", *SITES, "credentials", "data-init", "register", "job", "attack"]:
        host = st.inspect(service)["HostConfig"]
        assert host["CapDrop"] == ["ALL"], service
        assert host["SecurityOpt"] == ["no-new-privileges:true"], service
        assert host["ReadonlyRootfs"] is True, service
        assert host["Tmpfs"] == {"/tmp": "mode=1777", "/home/fedattack": "uid=10001,gid=10001,mode=0700"}
        assert st.inspect(service)["Config"]["User"] == "fedattack", service
        if service in ("credentials", "data-init", "attack"):
            assert host["NetworkMode"] == "none", service
    writes = live["writes"]
    assert writes.stdout.strip() == "10001" and "Read-only file system" in writes.stderr, writes
    status = live["status"].stdout
    caps = {ln.split(":")[0]: ln.split()[1] for ln in status.splitlines() if ln.startswith("Cap")}
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000", caps
    assert "NoNewPrivs:\t1" in status


def test_superlink_ran_with_tls_and_node_auth(stack) -> None:
    st, _, _, live = stack
    cmdlines = live["cmdlines"].stdout
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
    st, _, _, live = stack
    out = live["from-a-site"].stdout.split()
    assert out == ["403", "True"], live["from-a-site"]
    link = st.compose("logs", "--no-color", "superlink")
    assert "on 127.0.0.1:9091 for the operator's tools" in link and "(nothing else)" in link, link[-2000:]
    assert "runs apps signed by a key in /sites/A/trusted-entities.yaml" in st.compose(
        "logs", "--no-color", "site-a"
    )


def test_service_logs_read_as_plain_lines(stack) -> None:
    """What `docker compose up` shows: Flower's lines without colour escapes and without
    the empty "INFO :" lines between them (deploy/flower/readable.py), the job's round progress."""
    st, _, _, _ = stack
    for service in ["superlink", *SITES]:
        log = st.compose("logs", "--no-color", service)
        assert "\x1b[" not in log, service
        lines = [ln.split("|", 1)[-1].strip() for ln in log.splitlines()]
        assert not [ln for ln in lines if ln.rstrip(":").strip() in ("INFO", "WARNING")], service
    assert "INFO: [RUN" in st.compose("logs", "--no-color", "site-a")
    assert "round 0 done" in st.compose("logs", "--no-color", "job")


def test_sites_mount_only_their_volume(stack) -> None:
    st, _, _, _ = stack
    project = st.project
    for site in SITES:
        mounts = st.inspect(site)["Mounts"]
        assert [(m["Type"], m.get("Name"), m["Destination"]) for m in mounts] == [
            ("volume", f"{project}_{site}", f"/sites/{site[-1].upper()}")
        ], site


# The second study: FedDF, the sites training different architectures (a ResNet at A and B,
# a vision transformer at C and D), the ServerApp distilling on the public split that
# data-init writes to the SuperLink's server-public volume.
FEDDF = {
    "federation.strategy": "feddf",
    "federation.architectures": ["resnet18", "deit_tiny_patch16_224"],
    "federation.site_architectures": {
        "A": "resnet18",
        "B": "resnet18",
        "C": "deit_tiny_patch16_224",
        "D": "deit_tiny_patch16_224",
    },
    "federation.distill_steps": 10,
    "data.split.public_fraction": 0.25,  # 0.15 leaves the public NIH val part without a positive
}


def test_a_second_study_with_a_site_killed_is_harmless(stack) -> None:
    """README's study command again on the same volumes, with Compose v2 this time, min_sites
    3 and FedDF over two architectures; site-d killed once the job reports round 0 (the
    sites' validation of a round comes back with the next round's training, so the kill
    lands in the fine-tune step): the federation completes on three sites, the ServerApp
    distilled on the public split from its own volume, and the study ends with its report;
    the keys are not remade, and the store is the new study's alone (site D's local model
    of the first study is not left beside it). Nothing is left running."""
    st, tmp, _, _ = stack
    before = _verified_store(st, tmp / "store-1")
    started = st.inspect("attack")["State"]["StartedAt"]
    # TINY's round_timeout_s, 300: at 180 a loaded CI host once timed out sites A and B
    st.reconfigure({**TINY, **FEDDF, "federation.min_sites": 3})
    code, printed = _kill_site_d_after_round_0(st)
    assert code == 0, printed[-4000:]
    assert "run complete" in printed and "study complete" in _last(printed), printed[-4000:]
    assert st.inspect("attack")["State"]["StartedAt"] != started  # the study really ran again
    register = st.compose("logs", "--no-color", "register")
    assert register.count("already registered") == 4, register  # same keys, not remade
    # the first study stopped its sites before its SuperLink, so they deactivated there:
    # none is still "online" and refused when this study's sites start (within the minute)
    assert "could not be activated" not in st.compose("logs", "--no-color", "superlink")
    after = _verified_store(st, tmp / "store-2")
    assert len(before.models()) == 5
    vit = "deit_tiny_patch16_224"
    assert sorted(m.name for m in after.models()) == sorted(
        ["resnet18-global", f"{vit}-global", "resnet18-local-A", "resnet18-local-B", f"{vit}-local-C"]
    )
    manifest = json.loads((tmp / "store-2" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["missing"] == [f"{vit}-local-D"]
    events = [json.loads(x) for x in (tmp / "store-2" / "metrics.jsonl").read_text().splitlines()]
    distilled = [e for e in events if e["event"] == "distill"]
    assert sorted(e["arch"] for e in distilled) == sorted(["resnet18", vit]), distilled
    assert all(e["images"] > 0 for e in distilled), distilled  # the public split, read by the ServerApp
    sent = [e for e in events if e["event"] == "feddf-sent"]
    assert sent and all(e["arch"] == FEDDF["federation.site_architectures"][e["site"]] for e in sent), sent
    assert st.running() == [], st.running()


def test_image_holds_no_credentials_and_no_data(env: dict[str, str], image: str) -> None:
    # outside the installed packages (pydicom ships its own sample .dcm files), nothing
    # that looks like a key, a certificate of ours, a DICOM, a manifest or a wheel
    script = (
        "find / -xdev \\( -path /proc -o -path /opt/venv/lib -o -path /usr/share/python-wheels \\) "
        "-prune -o \\( -name '*.key' -o -name 'site-[A-D].key*' -o -name 'server.crt' -o -name 'ca.crt' "
        "-o -name '*.dcm' -o -name 'manifest.json' -o -name '*.whl' -o -name 'wheelhouse' \\) -print; "
        "find /credentials /state /work /data /runs /sites /server-public -type f -print; "
        "find /home/fedattack/.flwr -type f ! -name source -print"
    )
    found = sh([docker(), "run", "--rm", image, "sh", "-c", script], env, timeout=300).split()
    assert found == [], found
    history = sh([docker(), "history", "--no-trunc", image], env)
    assert "COPY deploy/docker/wheelhouse" not in history


def _last(printed: str, n: int = 20) -> str:
    return "\n".join(printed.rstrip().splitlines()[-n:])


def _kill_site_d_after_round_0(st: Stack) -> tuple[int, str]:
    """README's study command with Compose v2; site-d killed once the job reports round 0.
    Returns the study's exit code and what it printed."""
    compose_v2 = REPO / ".cache" / "compose-v2" / "docker-compose"
    assert compose_v2.exists(), "make compose-v2 fetches it (make test does)"
    study, out = st.study(compose=str(compose_v2))
    try:
        deadline = time.monotonic() + 600
        while "round 0 done" not in out.read_text():
            assert time.monotonic() < deadline and study.poll() is None, out.read_text()[-3000:]
            time.sleep(2)
        sh([docker(), "kill", st.cid("site-d")], st.env)
        return study.wait(timeout=600), out.read_text()
    finally:
        if study.poll() is None:
            study.kill()
        st.tail()


@pytest.mark.xdist_group("compose-kill")  # a stack of its own: runs beside the main one
def test_a_site_killed_mid_run_with_min_sites_4(env: dict[str, str], image: str, tmp_path: Path) -> None:
    """The same kill with min_sites 4 on a fresh stack: the study ends non-zero, the job's
    reason (how many sites replied) among its last lines, and nothing is left running
    (min_sites 3 is the second study on the main stack, above)."""
    config = {**TINY, "federation.min_sites": 4}
    st = Stack(env, tmp_path, f"fedattackkill4x{os.getpid()}", config)
    st.down()
    try:
        code, printed = _kill_site_d_after_round_0(st)
        last = _last(printed)
        assert code != 0, printed[-4000:]
        assert "of the required 4 sites" in last or "required SuperNodes" in last, last
        assert "study FAILED" in last, last
        assert st.running() == [], st.running()
    finally:
        st.down()
