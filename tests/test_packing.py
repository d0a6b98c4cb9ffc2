"""Packed weights: order-independent, exact round trip, integer counters restored."""

import pytest
import torch
from safetensors.torch import load, save

from shared.errors import FederationError
from shared.ml.models import build_model
from shared.ml.wire import from_record, pack, to_record, unpack

pytestmark = pytest.mark.unit


def test_roundtrip_is_exact_whatever_the_dict_order() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 48, 1)
    state = model.state_dict()
    via_safetensors = load(save({k: v.contiguous() for k, v in state.items()}))  # sorted keys
    assert list(via_safetensors) != list(state)
    for source in (state, via_safetensors):
        back = from_record(to_record(source), state, "test")
        assert list(back) == list(state)
        for k, v in state.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_mean_of_packed_vectors_is_the_per_tensor_mean() -> None:
    a, b = build_model("resnet18", 48, 1).state_dict(), build_model("resnet18", 48, 1).state_dict()
    mean = unpack(0.25 * pack(a) + 0.75 * pack(b), a, "test")
    k = "net.layer1.0.conv1.weight"
    torch.testing.assert_close(mean[k], 0.25 * a[k] + 0.75 * b[k])


def test_size_mismatch_names_the_cause() -> None:
    a = build_model("resnet18", 48, 1).state_dict()
    b = build_model("resnet34", 48, 1).state_dict()
    with pytest.raises(FederationError, match="disagree on the architecture"):
        unpack(pack(b), a, "site A")


def test_weights_trained_in_channels_last_travel_and_load_as_the_same_values() -> None:
    """Sites train on the CPU in channels_last (shared.ml.training.prepare): their weights
    packed for the wire, and a checkpoint written from them, hold the same values as the
    default layout, so the server and the attack (default layout on the CPU) get them exactly."""
    from shared.ml.training import prepare
    from shared.store.checkpoint import decode_state, encode_state, sha256_bytes

    torch.manual_seed(3)
    model = build_model("resnet18", 48, 1)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    trained = prepare(model, torch.device("cpu"), training=True)
    conv = trained.state_dict()["net.layer1.0.conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    state = trained.state_dict()
    back = from_record(to_record(state), plain, "test")
    data = encode_state(state, {"arch": "resnet18"})
    stored = decode_state(data, sha256_bytes(data), "test")
    for k, v in plain.items():
        assert torch.equal(back[k], v) and torch.equal(stored[k], v), k
    # and the default layout is what the attack's models keep on the CPU
    kept = prepare(build_model("resnet18", 48, 1), torch.device("cpu")).state_dict()
    assert not kept["net.layer1.0.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
