"""Credentials for a networked deployment, and the start-up checks that use them.

`make_credentials` writes a private CA, a server certificate whose subject alternative
names cover every address the SuperNodes dial, and one ECDSA key pair per site in the
OpenSSH format Flower's SuperNode authentication reads. The `check_*` functions turn
what would otherwise be a silent retry loop (a missing file, a key other users can read,
a SAN that does not match, a host that does not resolve) into one clear error at start-up.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import CredentialsError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"


def site_key_name(site: str) -> str:
    return f"site-{site}.key"


@dataclass(frozen=True)
class Credentials:
    """Where `make_credentials` put things."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    site_keys: dict[str, Path]  # private keys; the public key is next to each as .pub


def _write(path: Path, data: bytes, private: bool) -> None:
    """Atomic write; private files are created 0600 (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _write_pair(out: Path, cert_name: str, cert: x509.Certificate, key_name: str,
                key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """A PEM certificate (0644) and its unencrypted PKCS8 key (0600); returns both paths."""
    _write(out / key_name, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), private=True)
    _write(out / cert_name, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return out / cert_name, out / key_name


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedattack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(out: Path, days: int = 825) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name("fedattack CA")).issuer_name(_name("fedattack CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(key, hashes.SHA384())
    )
    return _write_pair(out, CA_CERT, cert, CA_KEY, key)


def make_server_cert(out: Path, sans: list[str], days: int = 825) -> tuple[Path, Path]:
    """A server certificate signed by the CA in `out`, valid for every name in `sans`."""
    if not sans:
        raise CredentialsError("the server certificate needs at least one --san (the address "
                               "the SuperNodes and the CLI dial)")
    ca_key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(sans[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san_entry(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return _write_pair(out, SERVER_CERT, cert, SERVER_KEY, key)


def make_site_key(path: Path) -> Path:
    """An ECDSA (NIST P-384) key pair in OpenSSH format: `path` (0600) and `path`.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), private=True)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    _write(path.with_name(path.name + ".pub"), pub + b"\n", private=False)
    return path


def make_credentials(out: Path, sans: list[str], sites: list[str], force: bool = False,
                     sites_dir: Path | None = None) -> Credentials:
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
            _write(out / pub.name, pub.read_bytes(), private=False)
            _write(home / CA_CERT, (out / CA_CERT).read_bytes(), private=False)
        keys[site] = path
    return Credentials(out / CA_CERT, server_cert, out / SERVER_KEY, keys)


# --- start-up checks -------------------------------------------------------------------------

def load_cert(path: Path) -> x509.Certificate:
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"{path}: certificate file not found; make it with "
                               "`fedattack deploy credentials` or fix the path")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise CredentialsError(f"{path}: not a PEM certificate") from None


def sans_of(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in ext.get_values_for_type(x509.DNSName)] + \
        [str(n) for n in ext.get_values_for_type(x509.IPAddress)]


def covers(cert: x509.Certificate, names: list[str]) -> bool:
    have = {s.lower() for s in sans_of(cert)}
    return all(_normal(n) in have for n in names)


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def check_private_key_permissions(path: Path) -> None:
    """A private key readable by group or others is refused (as ssh does)."""
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"{path}: private key file not found")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsError(f"{path}: private key is readable by others (mode {mode:04o}); "
                               f"run `chmod 600 {path}`")


def check_server_credentials(ca: Path, cert: Path, key: Path) -> x509.Certificate:
    """The SuperLink's files: present, PEM, the certificate issued by the CA, the key its own."""
    ca_cert, server_cert = load_cert(ca), load_cert(cert)
    check_private_key_permissions(key)
    try:
        server_key = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialsError(f"{key}: not an unencrypted PEM private key") from None
    _check_issued_by(server_cert, ca_cert, cert, ca)
    if server_key.public_key().public_numbers() != server_cert.public_key().public_numbers():
        raise CredentialsError(f"{key} is not the private key of {cert}: they do not match; "
                               "regenerate both with `fedattack deploy credentials --force`")
    _check_validity(server_cert, cert)
    if not sans_of(server_cert):
        raise CredentialsError(f"{cert}: no subject alternative names; TLS clients will refuse it")
    return server_cert


def _check_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, cert_path: Path,
                     ca_path: Path) -> None:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CredentialsError(f"{cert_path} was not issued by the CA in {ca_path}: the "
                               "certificate and the CA do not belong together") from None


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CredentialsError(f"{path}: valid only from {cert.not_valid_before_utc:%Y-%m-%d} to "
                               f"{cert.not_valid_after_utc:%Y-%m-%d}")


def check_node_key(path: Path) -> None:
    """A SuperNode's authentication key: 0600, OpenSSH format, elliptic curve."""
    check_private_key_permissions(path)
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialsError(f"{path}: not an unencrypted OpenSSH private key; make one with "
                               "`fedattack deploy credentials` (or `ssh-keygen -t ecdsa -b 384 "
                               "-N '' -f FILE`)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{path}: a {type(key).__name__.removeprefix('_')} key; SuperNode "
                               "authentication needs an ECDSA key (ssh-keygen -t ecdsa -b 384)")


def check_public_key(path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"{path}: public key file not found")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().strip())
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialsError(f"{path}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CredentialsError(f"{path}: not an ECDSA public key")


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CredentialsError(f"SuperLink address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def resolve(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as e:
        raise CredentialsError(f"SuperLink host {host!r} does not resolve ({e.strerror}); "
                               "check the name, /etc/hosts or DNS") from None


def probe_tls(address: str, ca: Path, timeout: float = 10.0) -> str:
    """TLS handshake with the SuperLink exactly as a client makes it: the CA must vouch for
    the server certificate and the certificate must name `address`'s host. Returns a short
    description; raises CredentialsError with the reason. An unreachable server is not an
    error here (a SuperNode may start first and wait)."""
    host, port = split_address(address)
    resolve(host)
    ca_cert = load_cert(ca)
    _check_validity(ca_cert, ca)
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            return f"TLS ok ({tls.version()})"
    except ssl.SSLCertVerificationError as e:
        raise CredentialsError(f"{address}: the server certificate is refused: {e.verify_message}; "
                               f"the dialled name {host!r} must be among its subject alternative "
                               f"names and it must be issued by the CA in {ca}") from None
    except ssl.SSLError as e:
        raise CredentialsError(f"{address}: TLS handshake failed ({e.reason}); is the SuperLink "
                               "started with TLS (not --insecure)?") from None
    except OSError:
        return "not reachable yet"
