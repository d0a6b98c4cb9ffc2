"""Credentials for a networked deployment: a private CA, the server certificate, site keys.

`make_credentials` writes a private CA, a server certificate whose subject alternative
names cover every address the SuperNodes dial, and one ECDSA key pair per site in the
OpenSSH format Flower's SuperNode authentication reads. deploy.checks verifies them at
start-up.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.checks import covers, load_cert
from deploy.flower import CA_CERT, SERVER_CERT, SERVER_KEY
from shared.errors import CredentialsError
from shared.io import atomic_write

CA_KEY = "ca.key"


def site_key_name(site: str) -> str:
    return f"site-{site}.key"


@dataclass(frozen=True)
class Credentials:
    """Where `make_credentials` put things."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    site_keys: dict[str, Path]  # private keys; the public key is next to each as .pub


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
    ca_key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{out / CA_KEY}: not the EC key `fedattack deploy credentials` makes")
    ca_cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
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
    out: Path, sans: list[str], sites: list[str], force: bool = False, sites_dir: Path | None = None
) -> Credentials:
    """CA + server certificate + one key pair per site under `out`. Existing files are kept
    (a re-run, for example a compose restart, must not invalidate registered keys) unless
    `force`; a kept server certificate must still cover every requested SAN.

    With `sites_dir`, each site's private key is made in `sites_dir/<site>/` (the site's own
    volume, which no other site mounts) with a copy of the CA certificate; only the public
    key goes to `out`."""
    out = Path(out)
    if force or not (out / CA_CERT).exists():
        make_ca(out)
    server_cert = out / SERVER_CERT
    if force or not server_cert.exists() or not covers(load_cert(server_cert), sans):
        make_server_cert(out, sans)
    keys = {}
    for site in sites:
        home = Path(sites_dir) / site if sites_dir else out
        path = home / site_key_name(site)
        if force or not path.exists():
            make_site_key(path)
        if sites_dir:
            pub = path.with_name(path.name + ".pub")
            atomic_write(out / pub.name, pub.read_bytes(), private=False)
            atomic_write(home / CA_CERT, (out / CA_CERT).read_bytes(), private=False)
        keys[site] = path
    return Credentials(out / CA_CERT, server_cert, out / SERVER_KEY, keys)
