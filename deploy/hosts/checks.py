"""Start-up checks of a networked deployment's inputs. They turn what would otherwise be a
silent retry loop (a missing file, a key other users can read, a SAN that does not match,
a host that does not resolve) into one clear error before anything starts."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import CredentialsError


def load_cert(path: Path) -> x509.Certificate:
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(
            f"{path}: certificate file not found; make it with `fedattack deploy credentials` or fix the path"
        )
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise CredentialsError(f"{path}: not a PEM certificate") from None


def sans_of(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in ext.get_values_for_type(x509.DNSName)] + [
        str(n) for n in ext.get_values_for_type(x509.IPAddress)
    ]


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
        raise CredentialsError(
            f"{path}: private key is readable by others (mode {mode:04o}); run `chmod 600 {path}`"
        )


def check_server_credentials(ca: Path, cert: Path, key: Path) -> x509.Certificate:
    """The SuperLink's files: present, PEM, the certificate issued by the CA, the key its own."""
    ca_cert, server_cert = load_cert(ca), load_cert(cert)
    check_private_key_permissions(key)
    try:
        server_key = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialsError(f"{key}: not an unencrypted PEM private key") from None
    _check_issued_by(server_cert, ca_cert, cert, ca)
    if server_key.public_key() != server_cert.public_key():
        raise CredentialsError(
            f"{key} is not the private key of {cert}: they do not match; "
            "regenerate both with `fedattack deploy credentials --force`"
        )
    _check_validity(server_cert, cert)
    if not sans_of(server_cert):
        raise CredentialsError(f"{cert}: no subject alternative names; TLS clients will refuse it")
    return server_cert


def _check_issued_by(
    cert: x509.Certificate, ca_cert: x509.Certificate, cert_path: Path, ca_path: Path
) -> None:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CredentialsError(
            f"{cert_path} was not issued by the CA in {ca_path}: the "
            "certificate and the CA do not belong together"
        ) from None


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CredentialsError(
            f"{path}: valid only from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}"
        )


def check_node_key(path: Path) -> None:
    """A SuperNode's authentication key: 0600, OpenSSH format, elliptic curve."""
    check_private_key_permissions(path)
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialsError(
            f"{path}: not an unencrypted OpenSSH private key; make one with "
            "`fedattack deploy credentials` (or `ssh-keygen -t ecdsa -b 384 "
            "-N '' -f FILE`)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(
            f"{path}: a {type(key).__name__.removeprefix('_')} key; SuperNode "
            "authentication needs an ECDSA key (ssh-keygen -t ecdsa -b 384)"
        )


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
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except socket.gaierror as e:
        raise CredentialsError(
            f"SuperLink host {host!r} does not resolve ({e.strerror}); check the name, /etc/hosts or DNS"
        ) from None


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
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return f"TLS ok ({tls.version()})"
    except ssl.SSLCertVerificationError as e:
        raise CredentialsError(
            f"{address}: the server certificate is refused: {e.verify_message}; "
            f"the dialled name {host!r} must be among its subject alternative "
            f"names and it must be issued by the CA in {ca}"
        ) from None
    except ssl.SSLError as e:
        raise CredentialsError(
            f"{address}: TLS handshake failed ({e.reason}); is the SuperLink "
            "started with TLS (not --insecure)?"
        ) from None
    except OSError:
        return "not reachable yet"
