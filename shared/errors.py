"""Typed errors. Each message names the file, column or key at fault and says what to do."""

from __future__ import annotations


class FedAttackError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(FedAttackError):
    """The experiment config is invalid (unknown, missing or mistyped key)."""


class DatasetError(FedAttackError):
    """A dataset on disk does not match the expected layout."""


class ImageReadError(DatasetError):
    """One image file cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class SplitError(FedAttackError):
    """The patient-level split cannot satisfy the config (for example an empty site)."""


class CheckpointError(FedAttackError):
    """A checkpoint store or one of its files is missing, tampered with or malformed."""


class FederationError(FedAttackError):
    """A federated run failed."""


class AttackError(FedAttackError):
    """The attack cannot run with the given inputs."""


class CredentialsError(FedAttackError):
    """TLS certificates or SuperNode keys are missing, mismatched or unsafe."""


class OutputError(FedAttackError):
    """An output folder cannot be created or written."""


class DeploymentError(FedAttackError):
    """A networked deployment cannot start (bad address, SuperLink refusing, ...)."""
