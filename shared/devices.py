"""The GPUs this process sees, and a requested device checked against them: the federation's
site placement and the attack's shards refuse a GPU that is not there with the same line."""

from __future__ import annotations

from shared.errors import ConfigError


def visible_gpus() -> int:
    """The CUDA devices this process sees (CUDA_VISIBLE_DEVICES applies)."""
    import torch  # only here: the launcher itself needs no torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def present_gpus(gpus: int) -> list[str]:
    """The names of `gpus` visible GPUs: cuda:0, cuda:1, ..."""
    return [f"cuda:{i}" for i in range(gpus)]


def require_present(key: str, device: str, gpus: int, fix: str) -> None:
    """A ConfigError naming `key` when `device` ('cpu' or 'cuda:N') is a GPU that is not
    among the `gpus` visible ones; `fix` says what to do instead."""
    present = present_gpus(gpus)
    if device == "cpu" or device in present:
        return
    here = f"the GPUs present are {', '.join(present)}" if present else "this host has no visible GPU"
    raise ConfigError(f"{key}: {device} is not on this host ({here}); {fix}")
