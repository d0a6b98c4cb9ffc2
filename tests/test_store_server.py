"""`fedattack deploy serve-store` as a real process on loopback: handshakes off the accept
loop, only the manifest and the files it lists, no symlinks or listings, client
certificates from the deployment's CA by default; and the real `fedattack attack` pulling
over HTTPS with the attack host's certificate."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attack.pull.fetch import read_manifest, tls_context
from deploy.flower.processes import free_port, wait_for_port
from deploy.hosts.credentials import make_credentials
from shared.errors import CheckpointError
from tests.conftest import REPO, write_config
from tests.test_attack_trust import SIZE, write_store

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-creds")
    make_credentials(out, ["127.0.0.1", "localhost"], [])
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_store(tmp_path_factory.mktemp("serve") / "store").root
    (root / "evil.safetensors").symlink_to("/etc/passwd")  # listed below, but a link
    (root / "folder.safetensors").mkdir()
    m = json.loads((root / "manifest.json").read_text())
    m["rounds"] = [
        {"arch": "resnet18", "round": 0, "file": f} for f in ("evil.safetensors", "folder.safetensors")
    ]
    (root / "manifest.json").write_text(json.dumps(m))
    (root / "config.yaml").write_text("unlisted: true\n")  # in the store, not in the manifest
    return root


def start(store: Path, log: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [str(BIN / "fedattack"), "deploy", "serve-store", "--store", str(store), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 60, proc, log)
    return proc, port


@pytest.fixture(scope="module")
def server(store: Path, creds: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc, port = start(store, log, "--credentials", str(creds))
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def client(creds: Path, cert: str | None = "attack") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(creds / "ca.crt"))
    if cert:
        ctx.load_cert_chain(creds / f"{cert}.crt", creds / f"{cert}.key")
    return ctx


def get(port: int, path: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_an_idle_connection_does_not_block_others(server: int, creds: Path) -> None:
    with socket.create_connection(("127.0.0.1", server)):  # connects, never says a word
        time.sleep(0.5)
        t0 = time.monotonic()
        status, body = get(server, "/manifest.json", client(creds))
        assert status == 200 and json.loads(body)["complete"] is True
        assert time.monotonic() - t0 < 5


def test_only_the_manifest_and_the_files_it_lists(server: int, creds: Path, store: Path) -> None:
    ctx = client(creds)
    m = json.loads(get(server, "/manifest.json", ctx)[1])
    for entry in m["models"]:
        status, body = get(server, "/" + entry["file"], ctx)
        assert status == 200 and body == (store / entry["file"]).read_bytes()
    for path in (
        "/evil.safetensors",  # listed, but a symlink to /etc/passwd
        "/folder.safetensors",  # listed, but a folder
        "/config.yaml",  # a file of the store the manifest does not list
        "/",  # no listing
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
    ):
        status, body = get(server, path, ctx)
        assert status == 404, (path, status)
        assert b"root:" not in body


def test_a_client_certificate_from_the_ca_is_required(server: int, creds: Path) -> None:
    url = f"https://127.0.0.1:{server}"
    with pytest.raises(CheckpointError, match="client certificate") as e:
        read_manifest(url, tls_context(creds / "ca.crt"))
    assert "\n" not in str(e.value)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # a server certificate is no client's
        get(server, "/manifest.json", client(creds, cert="server"))
    snap = read_manifest(url, tls_context(creds / "ca.crt", creds / "attack.crt", creds / "attack.key"))
    assert [m.name for m in snap.models] == ["resnet18-global", "resnet18-local-A"]


def test_public_serves_without_a_client_certificate(store: Path, creds: Path, tmp_path: Path) -> None:
    proc, port = start(store, tmp_path / "log", "--credentials", str(creds), "--public")
    try:
        assert get(port, "/manifest.json", client(creds, cert=None))[0] == 200
        assert get(port, "/config.yaml", client(creds, cert=None))[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_plain_http_needs_public(store: Path) -> None:
    res = subprocess.run(
        [str(BIN / "fedattack"), "deploy", "serve-store", "--store", str(store), "--insecure", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "add --public" in res.stderr and "Traceback" not in res.stderr


def test_the_attack_pulls_over_https_with_its_client_certificate(
    server: int, creds: Path, synth_dir: Path, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path / "cfg.yaml",
        synth_dir,
        tmp_path / "run",
        **{"data.image_size": SIZE, "attack.max_images_per_dataset": 3, "attack.batch_size": 8},
    )
    base = [sys.executable, "-m", "cli.main", "attack", "--config", str(cfg)]
    base += ["--checkpoints", f"https://127.0.0.1:{server}", "--root-certificates", str(creds / "ca.crt")]
    run = {"capture_output": True, "text": True, "timeout": 600, "cwd": REPO}
    res = subprocess.run([*base, "--out", str(tmp_path / "refused")], **run)  # type: ignore[call-overload]
    assert res.returncode == 2 and "client certificate" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    key = ["--client-cert", str(creds / "attack.crt"), "--client-key", str(creds / "attack.key")]
    res = subprocess.run([*base, "--out", str(tmp_path / "out"), *key], **run)  # type: ignore[call-overload]
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["resnet18-global", "resnet18-local-A"]
    assert sorted(os.listdir(tmp_path / "out" / ".checkpoints")) == [
        "resnet18-global.safetensors",
        "resnet18-local-A.safetensors",
    ]
