"""The project's Flower app, signed: only apps the operator signed run at the sites.

Flower 1.42's SuperNode runs a ClientApp only when one of its `--trusted-entities` keys
(Ed25519, OpenSSH format) verifies the FAB: the signature is Ed25519 over the 8-byte
big-endian signing time followed by the FAB's sha256 digest, base64url without padding.
Flower attaches signatures only to apps its SuperLink fetches from a hub
(`flwr run @publisher/app==version`, deploy/hosts/app_hub.py serves this one); a FAB sent
with `flwr run <folder>` carries none, and a SuperNode with trusted entities refuses it.

- `make_signing_key`: the operator's Ed25519 key pair (`app-signing.key` stays with the
  operator; `trusted-entities.yaml`, the public half, goes to every site).
- `sign_app`: build the FAB the way `flwr run` does and write it with its signature.
- `load_signed_app`: read a signed bundle back, checked (hash, signature) before use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.config.typed import load_yaml
from shared.errors import CredentialsError, DeploymentError
from shared.io import atomic_write

SIGNING_KEY = "app-signing.key"
TRUSTED_ENTITIES = "trusted-entities.yaml"
BUNDLE = "app.json"  # beside the FAB: what the hub answers
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def message_to_sign(fab: bytes, signed_at: int) -> bytes:
    """What Flower's SuperNode verifies: signing time (8 bytes, big-endian) + sha256(FAB)."""
    return signed_at.to_bytes(8, "big") + hashlib.sha256(fab).digest()


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    """A stable id for a signing key (its fingerprint), as trusted-entities.yaml names it."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "fedattack-" + hashlib.sha256(raw).hexdigest()[:16]


def _ssh_public(public: ed25519.Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def make_signing_key(path: Path) -> Path:
    """An Ed25519 key pair in OpenSSH format: `path` (0600), `path`.pub, and
    trusted-entities.yaml beside them (the public key under its id, for the sites)."""
    key = ed25519.Ed25519PrivateKey.generate()
    atomic_write(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    public = key.public_key()
    atomic_write(path.with_name(path.name + ".pub"), _ssh_public(public) + " fedattack-operator\n")
    write_trusted_entities(path.with_name(TRUSTED_ENTITIES), public)
    return path


def write_trusted_entities(path: Path, public: ed25519.Ed25519PublicKey) -> None:
    atomic_write(path, yaml.safe_dump({key_id(public): _ssh_public(public) + " fedattack-operator"}))


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise CredentialsError(
            f"{path}: no app-signing key; make one with `fedattack deploy credentials` (it writes "
            f"{SIGNING_KEY} and {TRUSTED_ENTITIES})"
        ) from None
    except (ValueError, TypeError, OSError) as e:
        raise CredentialsError(f"{path}: not an OpenSSH private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CredentialsError(f"{path}: not an Ed25519 key (Flower verifies apps with Ed25519 only)")
    return key


def check_trusted_entities(path: Path) -> dict[str, str]:
    """The id -> key map of a trusted-entities file, each an Ed25519 OpenSSH public key;
    one clear error otherwise (Flower's own check ends in a traceback)."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise CredentialsError(
            f"{path}: missing; copy the operator's {TRUSTED_ENTITIES} (written by `fedattack deploy "
            "credentials`) into the site's folder"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CredentialsError(f"{path}: not a YAML map of key ids to public keys ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise CredentialsError(f"{path}: must map at least one key id to an 'ssh-ed25519 ...' public key")
    for kid, text in raw.items():
        if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid) or not isinstance(text, str):
            raise CredentialsError(f"{path}: entry {kid!r} is not 'key-id: ssh-ed25519 AAAA...'")
        try:
            key = serialization.load_ssh_public_key(text.encode())
        except (ValueError, TypeError) as e:
            raise CredentialsError(f"{path}: key {kid!r} is not an OpenSSH public key ({e})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise CredentialsError(f"{path}: key {kid!r} is not Ed25519 (Flower verifies apps with Ed25519)")
    return {str(k): str(v) for k, v in raw.items()}


def app_identity(app_dir: Path) -> tuple[str, str]:
    """('@publisher/name', version) from the app's pyproject.toml, as Flower names it."""
    meta = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text())
    publisher = meta["tool"]["flwr"]["app"]["publisher"]
    return f"@{publisher}/{meta['project']['name']}", str(meta["project"]["version"])


def app_spec(app_dir: Path) -> str:
    """What `flwr run` is given to fetch this app, signed, through the hub."""
    app_id, version = app_identity(app_dir)
    return f"{app_id}=={version}"


@dataclass(frozen=True)
class SignedApp:
    """A FAB with its signature, as the hub serves it."""

    app_id: str
    version: str
    fab: bytes
    public_key_id: str
    signed_at: int
    signature: str  # base64url, no padding

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.fab).hexdigest()

    def verifications(self) -> list[dict[str, object]]:
        """The hub's `verifications` field (Flower's wire format)."""
        return [
            {"public_key_id": self.public_key_id, "signature": self.signature, "signed_at": self.signed_at}
        ]


def sign_app(app_dir: Path, key_path: Path, out: Path) -> SignedApp:
    """Build the app's FAB exactly as `flwr run <app_dir>` would, sign it with the
    operator's key and write `out`/<sha256>.fab and `out`/app.json (FAB written first)."""
    from flwr.cli.build import build_fab_from_disk  # Flower's own packer: the FAB `flwr run` ships

    key = load_signing_key(key_path)
    try:
        fab = build_fab_from_disk(Path(app_dir))
    except Exception as e:  # Flower raises typer exits and ValueErrors for a bad project
        raise DeploymentError(f"{app_dir}: cannot build the Flower app ({e})") from None
    app_id, version = app_identity(app_dir)
    signed_at = int(time.time())
    app = SignedApp(
        app_id,
        version,
        fab,
        key_id(key.public_key()),
        signed_at,
        _b64url(key.sign(message_to_sign(fab, signed_at))),
    )
    out = Path(out)
    atomic_write(out / f"{app.sha256}.fab", fab)
    record = {
        "app_id": app.app_id,
        "version": app.version,
        "sha256": app.sha256,
        "public_key": _ssh_public(key.public_key()),
        "verifications": app.verifications(),
    }
    atomic_write(out / BUNDLE, json.dumps(record, indent=2) + "\n")
    return app


def load_signed_app(folder: Path) -> SignedApp:
    """The signed app in `folder` (as `sign_app` wrote it), its hash and signature checked."""
    folder = Path(folder)
    try:
        record = json.loads((folder / BUNDLE).read_text())
        ver = record["verifications"][0]
        fab = (folder / f"{record['sha256']}.fab").read_bytes()
        public = serialization.load_ssh_public_key(record["public_key"].encode())
        app = SignedApp(
            str(record["app_id"]),
            str(record["version"]),
            fab,
            str(ver["public_key_id"]),
            int(ver["signed_at"]),
            str(ver["signature"]),
        )
    except FileNotFoundError as e:
        raise DeploymentError(
            f"{folder}: no signed app ({Path(e.filename).name} missing); sign it with `fedattack deploy "
            "sign-app --key app-signing.key --out` this folder"
        ) from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DeploymentError(
            f"{folder / BUNDLE}: not a signed app as `deploy sign-app` writes it ({e})"
        ) from None
    if app.sha256 != record["sha256"]:
        raise DeploymentError(f"{folder}: the FAB's sha256 is not the one {BUNDLE} records; sign it again")
    if not isinstance(public, ed25519.Ed25519PublicKey) or key_id(public) != app.public_key_id:
        raise DeploymentError(f"{folder / BUNDLE}: the public key does not match the signature's key id")
    try:
        public.verify(_unb64url(app.signature), message_to_sign(app.fab, app.signed_at))
    except (InvalidSignature, ValueError):
        raise DeploymentError(f"{folder}: the FAB's signature does not verify; sign it again") from None
    return app
