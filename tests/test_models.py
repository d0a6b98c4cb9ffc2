"""The model factory: timm architectures behind a [0,1]-input wrapper with its own normalization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.errors import CheckpointError, ConfigError
from shared.ml.models import build_model, model_from_state
from shared.ml.spec import InputSpec

pytestmark = pytest.mark.unit

ARCHS = ("resnet50", "densenet121", "inception_v3")


@pytest.mark.parametrize("arch", ARCHS)
def test_study_archs_take_01_images_at_the_experiment_size(arch: str) -> None:
    torch.manual_seed(0)
    m = build_model(arch, image_size=64, channels=1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = m(x)
    assert out.shape == (2, 2)
    spec = m.spec.to_json()
    assert spec["size"] == 64 and spec["channels"] == 1
    assert len(spec["mean"]) == 1 and 0 < spec["std"][0] < 1
    # normalization is inside: the wrapper equals the bare net on normalized (resized) input
    with torch.no_grad():
        z = (x - spec["mean"][0]) / spec["std"][0]
        if m.net_size != 64:
            z = torch.nn.functional.interpolate(
                z, size=(m.net_size, m.net_size), mode="bilinear", align_corners=False
            )
        torch.testing.assert_close(m.net(z), out)


def test_three_channel_and_unknown_arch() -> None:
    m = build_model("resnet18", image_size=48, channels=3)
    assert m(torch.rand(1, 3, 48, 48)).shape == (1, 2)
    assert len(m.spec.mean) == 3
    with pytest.raises(ConfigError, match="not a timm model"):
        build_model("resnet5000", image_size=48)


def test_local_pretrained_file_and_state_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_model("resnet18", image_size=48, channels=1)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, f)
    loaded = build_model("resnet18", image_size=48, channels=1, pretrained_file=f)
    # The backbone comes from the file; timm re-initializes the classifier for 2 classes
    # (the usual case: ImageNet weights with a 1000-class head).
    for k, v in src.net.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(loaded.net.state_dict()[k], v)
    with pytest.raises(ConfigError, match="not found"):
        build_model("resnet18", image_size=48, pretrained_file=tmp_path / "nope.safetensors")
    again = model_from_state("resnet18", src.spec, src.state_dict())
    torch.testing.assert_close(again.state_dict()["net.fc.weight"], src.state_dict()["net.fc.weight"])
    bad = dict(src.state_dict())
    bad["net.fc.weight"] = torch.zeros(3, 512)
    with pytest.raises(CheckpointError, match=r"net\.fc\.weight"):
        model_from_state("resnet18", src.spec, bad)


def test_net_size_is_recorded_and_rebuilt_from_the_spec() -> None:
    """A larger internal size (training.per_arch.<arch>.net_size) is part of the input spec:
    a model rebuilt from its checkpoint's spec resizes to the same size, and older
    checkpoints without the key keep the architecture's minimum."""
    torch.manual_seed(2)
    m = build_model("inception_v3", image_size=64, channels=1, net_size=107).eval()
    assert m.net_size == 107 and m.spec.net_size == 107
    assert build_model("inception_v3", 64, 1).spec.net_size == 75  # its minimum, recorded
    assert build_model("resnet18", 48, 1).spec.net_size == 48
    spec = InputSpec.from_json(m.spec.to_json())
    again = model_from_state("inception_v3", spec, m.state_dict()).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x))
        z = torch.nn.functional.interpolate((x - 0.5) / 0.5, size=(107, 107), mode="bilinear")
        torch.testing.assert_close(m.net(z), m(x))
    legacy = {k: v for k, v in m.spec.to_json().items() if k != "net_size"}
    assert model_from_state("inception_v3", InputSpec.from_json(legacy), m.state_dict()).net_size == 75
    with pytest.raises(ConfigError, match=r"per_arch\.inception_v3\.net_size: 60 .* at least 75"):
        build_model("inception_v3", 64, 1, net_size=60)
