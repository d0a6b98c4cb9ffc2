"""Start-up checks of the deployment commands: bad certificates, keys, addresses and data
each give one clear message and exit code 2, before anything is started or dialled.
Every command runs as a real subprocess (on success the long-running ones exec Flower)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from deploy.hosts.checks import load_cert, sans_of
from deploy.hosts.credentials import make_credentials, make_server_cert
from tests.cli_helpers import fedattack

pytestmark = pytest.mark.integration


def refused(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, f"rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    for n in needles:
        assert n in res.stderr, f"{n!r} not in:\n{res.stderr}"
    assert "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("creds")
    res = fedattack(
        "deploy", "credentials", "--out", str(out), "--san", "superlink.example", "--sites", "A", "B"
    )
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory, creds: Path) -> Path:
    """A site folder as `deploy prepare-data` would write it (manifest + images)."""
    from shared.data.manifest import Manifest
    from shared.data.records import Sample

    d = tmp_path_factory.mktemp("site")
    (d / "images").mkdir()
    (d / "images" / "x.png").write_bytes(b"png")
    Manifest(
        "site_A", "nih", "nih", d, {"train": (Sample("x.png", "p1", "images/x.png", 1),), "val": ()}
    ).save(d / "site_A.json")
    return d


def test_credentials_files_modes_and_sans(creds: Path, tmp_path: Path) -> None:
    for name in ("ca.key", "server.key", "site-A.key", "site-B.key"):
        assert (creds / name).stat().st_mode & 0o777 == 0o600, name
    assert set(sans_of(load_cert(creds / "server.crt"))) == {"superlink.example", "127.0.0.1", "localhost"}
    before = (creds / "site-A.key").read_bytes()
    rerun = _copy(creds, tmp_path)  # the re-run writes: into a copy of the module's folder
    again = make_credentials(rerun, ["superlink.example", "127.0.0.1", "localhost"], ["A", "B"])
    assert again.site_keys["A"].read_bytes() == before  # a re-run keeps registered keys


def _superlink(creds: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """The locked-down SuperLink (its signed app, never built here: the checks of the
    credentials come first)."""
    return fedattack(
        "deploy", "superlink", "--credentials", str(creds), "--state", str(tmp / "state"), "--port", "1",
        *(extra or ("--app", str(tmp / "app"))),
    )  # fmt: skip


def _copy(creds: Path, tmp: Path) -> Path:
    out = tmp / "c"
    shutil.copytree(creds, out)
    return out


def test_superlink_missing_certificate(creds: Path, tmp_path: Path) -> None:
    c = _copy(creds, tmp_path)
    (c / "server.crt").unlink()
    refused(_superlink(c, tmp_path), "server.crt: certificate file not found")


def test_superlink_key_of_another_certificate(creds: Path, tmp_path: Path) -> None:
    c = _copy(creds, tmp_path)
    other = make_credentials(tmp_path / "other", ["x"], [])
    shutil.copy(other.server_key, c / "server.key")
    os.chmod(c / "server.key", 0o600)
    refused(_superlink(c, tmp_path), "is not the private key of", "do not match")


def test_superlink_certificate_from_another_ca(creds: Path, tmp_path: Path) -> None:
    c = _copy(creds, tmp_path)
    shutil.copy(make_credentials(tmp_path / "other", ["x"], []).ca_cert, c / "ca.crt")
    refused(_superlink(c, tmp_path), "was not issued by the CA")


def test_superlink_key_readable_by_others(creds: Path, tmp_path: Path) -> None:
    c = _copy(creds, tmp_path)
    os.chmod(c / "server.key", 0o644)
    refused(_superlink(c, tmp_path), "readable by others", "chmod 600")


def test_superlink_certificate_without_loopback(creds: Path, tmp_path: Path) -> None:
    c = _copy(creds, tmp_path)
    make_server_cert(c, ["superlink.example"])
    refused(_superlink(c, tmp_path), "lack 127.0.0.1")


def test_superlink_needs_tls_or_explicit_insecure(tmp_path: Path) -> None:
    refused(fedattack("deploy", "superlink", "--state", str(tmp_path)), "--insecure")


def test_superlink_with_credentials_is_locked_down_unless_told_otherwise(creds: Path, tmp_path: Path) -> None:
    """Without the signed app it would serve Flower's Control API on the public port (a host
    holding only ca.crt registered its own SuperNode key): refused, in one line saying what
    to pass, before anything starts; --unsafe-open-control-api is the explicit way there."""
    from cli.main import build_parser
    from deploy.hosts.server import start_superlink
    from shared.errors import CredentialsError, DeploymentError

    res = _superlink(creds, tmp_path, "--host", "127.0.0.1")  # no --app
    refused(res, "refusing to serve Flower's Control API on the public port", "--app DIR")
    assert "--unsafe-open-control-api" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()
    with pytest.raises(DeploymentError, match="--unsafe-open-control-api"):  # the function alike
        start_superlink(creds, tmp_path / "state", "127.0.0.1", 1)
    # the flag passes the refusal (in this process: the start-up checks that follow it still
    # apply, and stop it before anything is started)
    c = _copy(creds, tmp_path)
    (c / "server.crt").unlink()
    argv = ["deploy", "superlink", "--credentials", str(c), "--state", str(tmp_path / "state")]
    args = build_parser().parse_args([*argv, "--port", "1", "--unsafe-open-control-api"])
    with pytest.raises(CredentialsError, match=r"server\.crt: certificate file not found"):
        args.func(args)


def _supernode(
    site_dir: Path, creds: Path, key: Path, address: str = "127.0.0.1:1"
) -> subprocess.CompletedProcess:
    return fedattack(
        "deploy",
        "supernode",
        "--site",
        "A",
        "--superlink",
        address,
        "--data",
        str(site_dir),
        "--root-certificates",
        str(creds / "ca.crt"),
        "--key",
        str(key),
    )


def test_supernode_key_with_wrong_permissions(site_dir: Path, creds: Path, tmp_path: Path) -> None:
    key = tmp_path / "k"
    shutil.copy(creds / "site-A.key", key)
    os.chmod(key, 0o640)
    refused(_supernode(site_dir, creds, key), "readable by others")


@pytest.mark.parametrize("kind", ["pem-ec", "ssh-rsa", "garbage"])
def test_supernode_key_in_the_wrong_format(site_dir: Path, creds: Path, tmp_path: Path, kind: str) -> None:
    key = tmp_path / "k"
    if kind == "pem-ec":
        data = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        needle = "not an unencrypted OpenSSH private key"
    elif kind == "ssh-rsa":
        data = rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        needle = "needs an ECDSA key"
    else:
        data, needle = b"not a key\n", "not an unencrypted OpenSSH private key"
    key.write_bytes(data)
    os.chmod(key, 0o600)
    refused(_supernode(site_dir, creds, key), needle)


def test_supernode_unresolvable_superlink(site_dir: Path, creds: Path) -> None:
    refused(
        _supernode(site_dir, creds, creds / "site-A.key", "no-such-host.invalid:9093"),
        "'no-such-host.invalid' does not resolve",
    )


def test_supernode_missing_ca(site_dir: Path, creds: Path, tmp_path: Path) -> None:
    res = fedattack(
        "deploy",
        "supernode",
        "--site",
        "A",
        "--superlink",
        "127.0.0.1:1",
        "--data",
        str(site_dir),
        "--root-certificates",
        str(tmp_path / "nope.crt"),
        "--key",
        str(creds / "site-A.key"),
    )
    refused(res, "nope.crt: certificate file not found")


def test_supernode_without_its_data(creds: Path, tmp_path: Path) -> None:
    res = _supernode(tmp_path, creds, creds / "site-A.key")
    refused(res, "site_A.json", "manifest not found")


def test_supernode_bad_address_syntax(site_dir: Path, creds: Path) -> None:
    refused(_supernode(site_dir, creds, creds / "site-A.key", "superlink"), "expected HOST:PORT")


def test_register_rejects_a_non_ecdsa_public_key(creds: Path, tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_bytes(
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    res = fedattack(
        "deploy",
        "register",
        "--superlink",
        "127.0.0.1:1",
        "--root-certificates",
        str(creds / "ca.crt"),
        "--public-key",
        str(pub),
    )
    refused(res, "not an ECDSA public key")


def test_attack_with_a_missing_ca_file(tmp_path: Path, config_path: Path) -> None:
    res = fedattack(
        "attack",
        "--config",
        str(config_path),
        "--checkpoints",
        "https://127.0.0.1:1",
        "--root-certificates",
        str(tmp_path / "ca.crt"),
    )
    refused(res, "ca.crt: CA certificate not found")


def test_prepare_data_refuses_a_partial_mount(tmp_path: Path, synth_dir: Path) -> None:
    from tests.conftest import write_config

    cfg = write_config(tmp_path / "cfg.yaml", synth_dir, tmp_path / "run")
    text = cfg.read_text().replace(str(synth_dir / "rsna"), str(tmp_path / "empty"))
    cfg.write_text(text)
    res = fedattack(
        "deploy",
        "prepare-data",
        "--config",
        str(cfg),
        "--work",
        str(tmp_path / "w"),
        "--sites-dir",
        str(tmp_path / "s"),
        "--attack-dir",
        str(tmp_path / "a"),
        "--synth-if-missing",
    )
    refused(res, str(tmp_path / "empty"), "mount every dataset")
    assert not (tmp_path / "s").exists()


def test_prepare_data_gives_the_server_the_public_split_alone(tmp_path: Path, synth_dir: Path) -> None:
    """--server-dir (compose's server-public volume, the SuperLink's splits folder): the
    public manifests and their images, no site's shard and no test set; every exported
    folder records its images relative to itself, so it reads the same wherever it is
    mounted (the SuperLink mounts server-public at /runs/splits, data-init at /server-public)."""
    from deploy.hosts.export import prepare_deployment_data
    from shared.data.manifest import load_manifest
    from tests.conftest import write_config

    cfg = write_config(
        tmp_path / "cfg.yaml", synth_dir, tmp_path / "run", **{"data.split.public_fraction": 0.25}
    )
    server, attack = tmp_path / "server-public", tmp_path / "attack"
    prepare_deployment_data(cfg, tmp_path / "w", tmp_path / "sites", attack, False, server)
    assert sorted(p.name for p in server.iterdir()) == [
        "public-nih",
        "public-rsna",
        "public_nih.json",
        "public_rsna.json",
    ]
    mounted = tmp_path / "elsewhere" / "splits"  # the same volume, mounted at another path
    mounted.parent.mkdir()
    shutil.move(server, mounted)
    for name in ("nih", "rsna"):
        m = load_manifest(mounted / f"public_{name}.json")
        assert m.data_root == mounted / f"public-{name}"
        images = [s for part in m.parts.values() for s in part]
        assert images and all((m.data_root / s.relpath).is_file() for s in images)
        outsider = load_manifest(attack / f"public_{name}.json")  # the attack's copy: the same split
        assert outsider.parts == m.parts and outsider.data_root == attack / f"public-{name}"
    site = load_manifest(tmp_path / "sites" / "A" / "site_A.json")
    assert site.data_root == tmp_path / "sites" / "A"
