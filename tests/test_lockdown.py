"""The locked-down deployment's parts, each real: the app signature (Flower's own FAB
packer, Ed25519), the sites' trusted-entities file, the hub the SuperLink fetches the
signed app from (HTTP on loopback) and the Fleet proxy's gate (its ASGI app, driven
through Starlette's test client: what it refuses never reaches an upstream)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from deploy.flower.connection import app_dir
from deploy.hosts.app_hub import start_hub
from deploy.hosts.appsign import BUNDLE, check_trusted_entities, load_signed_app, make_signing_key, sign_app
from deploy.hosts.credentials import make_credentials
from deploy.hosts.fleet_proxy import FLEET_PATHS, allowed, build_app
from shared.errors import CredentialsError, DeploymentError


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("signed")
    key = make_signing_key(d / "app-signing.key")
    sign_app(app_dir(), key, d / "app")
    return d


@pytest.mark.unit
def test_signed_app_verifies_and_names_the_trusted_key(signed: Path) -> None:
    app = load_signed_app(signed / "app")
    assert app.fab[:2] == b"PK"  # a zip, as `flwr run` ships it
    trusted = check_trusted_entities(signed / "trusted-entities.yaml")
    assert list(trusted) == [app.public_key_id]
    assert (signed / "app-signing.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.unit
def test_tampered_fab_or_signature_is_refused(signed: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "app"
    shutil.copytree(signed / "app", copy)
    record = json.loads((copy / BUNDLE).read_text())
    fab = copy / f"{record['sha256']}.fab"
    fab.write_bytes(fab.read_bytes() + b"x")
    with pytest.raises(DeploymentError, match="sha256"):
        load_signed_app(copy)
    shutil.rmtree(copy)
    shutil.copytree(signed / "app", copy)
    sig = record["verifications"][0]["signature"]
    record["verifications"][0]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    (copy / BUNDLE).write_text(json.dumps(record))
    with pytest.raises(DeploymentError, match="signature does not verify"):
        load_signed_app(copy)
    with pytest.raises(DeploymentError, match="no signed app"):
        load_signed_app(tmp_path / "nowhere")


@pytest.mark.unit
def test_trusted_entities_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"missing\.yaml"):
        check_trusted_entities(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fedattack-x: ssh-rsa AAAA\n")
    with pytest.raises(CredentialsError, match=r"bad\.yaml"):
        check_trusted_entities(bad)


@pytest.mark.integration
def test_hub_serves_only_the_signed_app(signed: Path) -> None:
    app = load_signed_app(signed / "app")
    server, url = start_hub(app)
    try:

        def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
            req = urllib.request.Request(f"{url}/hub/fetch-fab", json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, answer = post({"app_id": app.app_id, "app_version": app.version})
        assert status == 200 and answer["verifications"] == app.verifications()
        with urllib.request.urlopen(str(answer["fab_url"]), timeout=10) as r:
            assert r.read() == app.fab
        assert post({"app_id": "@evil/app", "app_version": app.version})[0] == 404
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/hub/fab/{'0' * 64}.fab", timeout=10)
        assert url.startswith("http://127.0.0.1:")
    finally:
        server.shutdown()


@pytest.mark.unit
def test_fleet_gate_allows_only_exact_fleet_posts() -> None:
    for path in FLEET_PATHS:
        assert allowed("POST", path.encode(), b"")
        assert not allowed("GET", path.encode(), b"")
        assert not allowed("POST", path.encode(), b"a=1")
    for path in [
        "/v1/fleet/register-node",
        "/v1/fleet/unregister-node",
        "/v1/control/start-run",
        "/v1/fleet/../control/start-run",
        "/v1/fleet/pull%2Dmessages",
        "/docs",
        "/",
    ]:
        assert not allowed("POST", path.encode(), b""), path


@pytest.mark.integration
def test_fleet_proxy_refuses_control_calls_before_any_upstream() -> None:
    # The upstream is a closed port: a request that got past the gate would fail with 502.
    with TestClient(build_app("https://127.0.0.1:9", False)) as client:
        for path in ["/v1/control/start-run", "/v1/fleet/register-node", "/docs", "/v1/fleet/..%2fcontrol"]:
            assert client.post(path, content=b"{}").status_code == 403, path
        assert client.get("/v1/fleet/pull-messages").status_code == 403
        assert client.post("/v1/fleet/pull-messages", content=b"{}").status_code == 502


@pytest.mark.unit
def test_credentials_give_each_party_only_its_part(tmp_path: Path) -> None:
    out, sites, server, operator = (tmp_path / n for n in ("creds", "sites", "server", "operator"))
    make_credentials(
        out, ["127.0.0.1", "localhost"], ["A", "B"], sites_dir=sites, server_dir=server, operator_dir=operator
    )
    assert sorted(p.name for p in server.iterdir()) == ["ca.crt", "server.crt", "server.key"]
    assert sorted(p.name for p in operator.iterdir()) == ["ca.crt", "site-A.key.pub", "site-B.key.pub"]
    for site in "AB":
        names = sorted(p.name for p in (sites / site).iterdir())
        assert names == ["ca.crt", f"site-{site}.key", f"site-{site}.key.pub", "trusted-entities.yaml"]
        check_trusted_entities(sites / site / "trusted-entities.yaml")
    assert (out / "app-signing.key").is_file() and not (sites / "A" / "app-signing.key").exists()
