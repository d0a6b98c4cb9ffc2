"""Pretrained weights from local files (training.pretrained): torchvision .pth state dicts
and timm safetensors load into the project's models; a file for another architecture, with
missing tensors, or not a weights file at all is refused by name before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from shared.errors import ConfigError
from shared.ml.models import build_model
from shared.ml.weights import read_weights


@pytest.fixture(scope="module")
def tv_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("w") / "resnet18-tv.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.unit
def test_a_torchvision_resnet_file_loads_tensor_for_tensor(tv_resnet18: tuple[Path, dict]) -> None:
    path, state = tv_resnet18
    model = build_model("resnet18", 48, 1, pretrained_file=path)
    own = model.net.state_dict()
    torch.testing.assert_close(own["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    torch.testing.assert_close(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))  # RGB -> gray
    assert own["fc.weight"].shape == (2, 512)


@pytest.mark.unit
def test_checkpoint_wrappers_and_dataparallel_prefixes_are_unwrapped(tmp_path: Path, tv_resnet18) -> None:
    _, state = tv_resnet18
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert set(read_weights(wrapped, "k")) == set(state)
    timm_file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, timm_file)
    build_model("resnet18", 48, 1, pretrained_file=timm_file)


@pytest.mark.unit
def test_torchvisions_densenet_names_and_inceptions_aux_head_are_accepted(tmp_path: Path) -> None:
    """torchvision's published DenseNet files spell norm1 as 'norm.1'; its InceptionV3 files
    carry the auxiliary head timm's model has not."""
    state = torchvision.models.densenet121().state_dict()
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()}
    torch.save(old, tmp_path / "d.pth")
    net = build_model("densenet121", 32, 1, pretrained_file=tmp_path / "d.pth").net.state_dict()
    key = "features.denseblock4.denselayer16.conv2.weight"
    torch.testing.assert_close(net[key], state[key])
    inc = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    torch.save(inc, tmp_path / "i.pth")
    net = build_model("inception_v3", 32, 1, pretrained_file=tmp_path / "i.pth").net.state_dict()
    torch.testing.assert_close(
        net["Mixed_7c.branch_pool.conv.weight"], inc["Mixed_7c.branch_pool.conv.weight"]
    )


@pytest.mark.unit
def test_a_wrong_or_incomplete_file_is_refused_by_name(tmp_path: Path, tv_resnet18) -> None:
    path, state = tv_resnet18
    with pytest.raises(ConfigError) as e:
        build_model("densenet121", 32, 1, pretrained_file=path)
    assert str(e.value).startswith(
        f"training.pretrained.densenet121: {path} is not a densenet121 weights file"
    )
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.1.")}, partial)
    with pytest.raises(ConfigError, match=r"tensors are missing \(layer4\.1\.bn1\.bias"):
        build_model("resnet18", 48, 1, pretrained_file=partial)
    wide = tmp_path / "wide.pth"
    torch.save({**state, "layer4.1.conv2.weight": torch.zeros(512, 512, 1, 1)}, wide)
    with pytest.raises(ConfigError, match=r"tensor layer4\.1\.conv2\.weight has shape \(512, 512, 1, 1\)"):
        build_model("resnet18", 48, 1, pretrained_file=wide)
    junk = tmp_path / "notes.pth"
    junk.write_text("not weights")
    with pytest.raises(ConfigError, match=r"notes\.pth is not a weights file"):
        build_model("resnet18", 48, 1, pretrained_file=junk)
    with pytest.raises(ConfigError, match="not found"):
        build_model("resnet18", 48, 1, pretrained_file=tmp_path / "gone.pth")
