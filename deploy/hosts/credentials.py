"""Credentials for a networked deployment: a private CA, the server certificate, site keys.

`make_credentials` writes a private CA, a server certificate whose subject alternative
names cover every address the SuperNodes dial, a client certificate for the attack host
(it authenticates to `deploy serve-store`), one ECDSA key pair per site in the
OpenSSH format Flower's SuperNode authentication reads, and the operator's Ed25519
app-signing key with its public half for the sites (deploy/hosts/appsign.py). deploy.hosts.checks
verifies them at start-up.

Each party gets only what it needs: a site's folder its own key, ca.crt and
trusted-entities.yaml; the server's folder (`server_dir`) ca.crt and the server's key
pair; the operator's tools (`operator_dir`) ca.crt and the sites' public keys. ca.key
and app-signing.key stay in `out`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.flower.commands import CA_CERT, SERVER_CERT, SERVER_KEY
from deploy.hosts.appsign import (
    SIGNING_KEY,
    TRUSTED_ENTITIES,
    load_signing_key,
    make_signing_key,
    write_trusted_entities,
)
from deploy.hosts.checks import covers, load_cert
from shared.errors import CredentialsError
from shared.io import atomic_write

CA_KEY = "ca.key"
ATTACK_CERT, ATTACK_KEY = "attack.crt", "attack.key"  # the attack host's client certificate
_HOSTNAME = re.compile(
    r"[A-Za-z0-9_*]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*"
)


def site_key_name(site: str) -> str:
    return f"site-{site}.key"


@dataclass(frozen=True)
class Credentials:
    """Where `make_credentials` put things."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    site_keys: dict[str, Path]  # private keys; the public key is next to each as .pub
    attack_cert: Path | None = None  # with attack_key: the attack host's client certificate
    attack_key: Path | None = None
    signing_key: Path | None = None  # the operator's app-signing key (trusted-entities.yaml beside)


def _write_pair(
    out: Path, cert_name: str, cert: x509.Certificate, key_name: str, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """A PEM certificate (0644) and its unencrypted PKCS8 key (0600); returns both paths."""
    atomic_write(
        out / key_name,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        private=True,
    )
    atomic_write(out / cert_name, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return out / cert_name, out / key_name


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedattack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def check_sans(sans: list[str]) -> None:
    """Every --san must be an IP address or a DNS name (the address the SuperNodes dial)."""
    for name in sans:
        try:
            ipaddress.ip_address(name)
            continue
        except ValueError:
            pass
        if len(name) > 253 or not _HOSTNAME.fullmatch(name):
            raise CredentialsError(
                f"--san {name!r}: not a DNS name or an IP address; give the name or address the "
                "SuperNodes dial, e.g. --san fl.example.org --san 10.0.0.5"
            )


def _ca(out: Path, needed_for: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA's key and certificate, to sign `needed_for`."""
    if not (out / CA_KEY).is_file():
        raise CredentialsError(
            f"{out / CA_KEY}: missing, but {out / CA_CERT} exists; the CA's private key is needed "
            f"to sign {needed_for}. Put ca.key back (from where you keep it offline), or remake "
            "everything with --force (then register the new site keys and give every site the new ca.crt)"
        )
    ca_key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{out / CA_KEY}: not the EC key `fedattack deploy credentials` makes")
    return ca_key, x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())


def make_ca(out: Path, days: int = 825) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedattack CA"))
        .issuer_name(_name("fedattack CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA384())
    )
    return _write_pair(out, CA_CERT, cert, CA_KEY, key)


def make_server_cert(out: Path, sans: list[str], days: int = 825) -> tuple[Path, Path]:
    """A server certificate signed by the CA in `out`, valid for every name in `sans`."""
    if not sans:
        raise CredentialsError(
            "the server certificate needs at least one --san (the address the SuperNodes and the CLI dial)"
        )
    check_sans(sans)
    ca_key, ca_cert = _ca(out, out / SERVER_CERT)
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(sans[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san_entry(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return _write_pair(out, SERVER_CERT, cert, SERVER_KEY, key)


def make_attack_cert(out: Path, days: int = 825) -> tuple[Path, Path]:
    """The attack host's client certificate (EC, clientAuth only), signed by the CA in `out`:
    `deploy serve-store` serves the checkpoint store only to its holder."""
    ca_key, ca_cert = _ca(out, out / ATTACK_CERT)
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedattack attack host"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return _write_pair(out, ATTACK_CERT, cert, ATTACK_KEY, key)


def make_site_key(path: Path) -> Path:
    """An ECDSA (NIST P-384) key pair in OpenSSH format: `path` (0600) and `path`.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    atomic_write(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write(path.with_name(path.name + ".pub"), pub + b"\n", private=False)
    return path


def make_credentials(
    out: Path,
    sans: list[str],
    sites: list[str],
    force: bool = False,
    sites_dir: Path | None = None,
    server_dir: Path | None = None,
    operator_dir: Path | None = None,
) -> Credentials:
    """CA + server certificate + one key pair per site + the app-signing key under `out`.
    Existing files are kept (a re-run, for example a compose restart, must not invalidate
    registered keys or the sites' trusted entities) unless `force`; a kept server
    certificate must still cover every requested SAN.

    With `sites_dir`, each site's private key is made in `sites_dir/<site>/` (the site's own
    volume, which no other site mounts) with copies of the CA certificate and of
    trusted-entities.yaml; only the public key goes to `out`. `server_dir` and
    `operator_dir` get copies of what the SuperLink and the operator's tools need."""
    out = Path(out)
    check_sans(sans)
    if force or not (out / CA_CERT).exists():
        make_ca(out)
    server_cert = out / SERVER_CERT
    if force or not server_cert.exists() or not covers(load_cert(server_cert), sans):
        make_server_cert(out, sans)
    if force or not (out / ATTACK_CERT).exists() or not (out / ATTACK_KEY).exists():
        make_attack_cert(out)
    signing = out / SIGNING_KEY
    if force or not signing.exists():
        make_signing_key(signing)
    elif not (out / TRUSTED_ENTITIES).exists():
        write_trusted_entities(out / TRUSTED_ENTITIES, load_signing_key(signing).public_key())
    keys = {}
    for site in sites:
        home = Path(sites_dir) / site if sites_dir else out
        path = home / site_key_name(site)
        if force or not path.exists():
            make_site_key(path)
        if sites_dir:
            pub = path.with_name(path.name + ".pub")
            atomic_write(out / pub.name, pub.read_bytes(), private=False)
            _copy(out, home, [CA_CERT, TRUSTED_ENTITIES])
        keys[site] = path
    if server_dir:
        _copy(out, Path(server_dir), [CA_CERT, SERVER_CERT, SERVER_KEY])
    if operator_dir:
        _copy(out, Path(operator_dir), [CA_CERT, *(f"{site_key_name(s)}.pub" for s in sites)])
    attack = (out / ATTACK_CERT, out / ATTACK_KEY)
    return Credentials(out / CA_CERT, server_cert, out / SERVER_KEY, keys, *attack, signing)


def _copy(src: Path, dst: Path, names: list[str]) -> None:  # a private key stays 0600
    for name in names:
        atomic_write(dst / name, (src / name).read_bytes(), private=name.endswith(".key"))
