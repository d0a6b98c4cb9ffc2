"""The wire format of this project's Flower messages: model weights as one flat float32
vector, and typed readers of the records a message carries.

Flower moves every array of a message as a separate object; a DenseNet121 state dict
has ~1,000 tensors. Packing them into one vector makes a message one object, and
FedAvg's element-wise weighted mean of the vectors is exactly the per-tensor mean.
Integer buffers (BatchNorm counters) travel as floats and are rounded back on unpack.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from shared.config.typed import coerce
from shared.errors import ConfigError, FederationError

FLAT_KEY = "flat"
T = TypeVar("T")


def pack(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Concatenate every tensor, in sorted key order, into one float32 vector.

    Sorted, not insertion order: a state dict read back from safetensors comes sorted,
    one from a model does not, and both must pack alike."""
    parts = [state[k].detach().to("cpu", torch.float32).reshape(-1) for k in sorted(state)]
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)


def unpack(flat: np.ndarray, reference: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Split a packed vector back into tensors shaped and typed like `reference`."""
    flat_t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    total = sum(v.numel() for v in reference.values())
    if flat_t.numel() != total:
        raise FederationError(
            f"{where}: received {flat_t.numel()} weights, the local model has {total}: "
            "server and site disagree on the architecture or input channels"
        )
    out, i = {}, 0
    for k in sorted(reference):
        ref = reference[k]
        n = ref.numel()
        piece = flat_t[i : i + n].reshape(ref.shape)
        out[k] = piece.round().to(ref.dtype) if not ref.dtype.is_floating_point else piece.to(ref.dtype)
        i += n
    return {k: out[k] for k in reference}  # the reference's own key order


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A one-array ArrayRecord holding the packed state."""
    return ArrayRecord({FLAT_KEY: Array(pack(state))})


def from_record(
    record: ArrayRecord, reference: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """The state dict inside a packed ArrayRecord, typed like `reference`."""
    if FLAT_KEY not in record:
        raise FederationError(f"{where}: expected packed weights under {FLAT_KEY!r}, got {list(record)}")
    return unpack(record[FLAT_KEY].numpy(), reference, where)


def arrays_in(content: RecordDict, key: str = "arrays") -> ArrayRecord:
    """The ArrayRecord under `key` of a message's content."""
    record = content.get(key)
    if not isinstance(record, ArrayRecord):
        raise FederationError(f"message: expected an ArrayRecord under {key!r}, got {type(record).__name__}")
    return record


def config_in(content: RecordDict, key: str) -> ConfigRecord:
    """The ConfigRecord under `key` of a message's content."""
    record = content.get(key)
    if not isinstance(record, ConfigRecord):
        raise FederationError(f"message: expected a ConfigRecord under {key!r}, got {type(record).__name__}")
    return record


def metrics_in(content: RecordDict, key: str = "metrics") -> dict[str, float]:
    """The MetricRecord under `key` as floats (scalar metrics only)."""
    record = content.get(key)
    if not isinstance(record, MetricRecord):
        raise FederationError(f"message: expected a MetricRecord under {key!r}, got {type(record).__name__}")
    out = {}
    for k, v in record.items():
        if not isinstance(v, (int, float)):
            raise FederationError(f"message: metric {k!r} must be a number, got {type(v).__name__}")
        out[k] = float(v)
    return out


def config_value(record: ConfigRecord, key: str, tp: type[T], default: T | None = None) -> T:
    """Entry `key` of a ConfigRecord, checked as `tp` by the config's coercer
    (shared.config.typed.coerce); a missing entry is `default`, an error without one."""
    value = record.get(key, default)
    if value is None:
        raise FederationError(f"message: config {key!r} is missing")
    try:
        return coerce(tp, value, key, "message: config")
    except ConfigError as e:
        raise FederationError(str(e)) from None
