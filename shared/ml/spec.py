"""What a model expects as input, recorded in every checkpoint (no torch here: the store,
the CLI and the config checks read it without loading the model code)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: recorded in every checkpoint's metadata.

    size is the image size the model takes (the experiment's); net_size the size its
    network sees after the wrapper's bilinear resize (0 in checkpoints written before it
    was recorded: then the architecture's minimum, MIN_INPUT, or size)."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    net_size: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputSpec:
        return cls(
            int(d["size"]),
            int(d["channels"]),
            tuple(map(float, d["mean"])),
            tuple(map(float, d["std"])),
            int(d.get("net_size", 0)),
        )
