"""Architectures beyond the three CNNs (issue 32) at tiny size: a ViT, DeiT, ConvNeXt and
EfficientNet through the one factory (Swin, 27M parameters, is left out to keep the suite fast:
it is sized like the ViTs, through the same img_size path), with what BatchNorm recalibration, FedBN and the
calibration do for each, and their bad inputs refused at config load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attack.measure.core import Cell, Measurement
from attack.reports.families import families_md, family_pairs
from attack.reports.tables import Info
from shared.config.experiment import load_config
from shared.config.training import arch_family
from shared.errors import ConfigError
from shared.ml.batchnorm import layers, personal_keys, recalibrate
from shared.ml.calibration import fold_threshold, head
from shared.ml.models import build_model
from tests.conftest import write_config

pytestmark = pytest.mark.unit

SIZE = 32  # the smallest image size a config accepts; a 2x2 grid of 16-pixel patches
# arch -> (its normalisation layers hold running statistics, tokens its positional embedding has)
ARCHS = {
    "vit_small_patch16_224": (False, (SIZE // 16) ** 2 + 1),
    "deit_tiny_patch16_224": (False, (SIZE // 16) ** 2 + 1),
    "convnext_atto": (False, None),
    "efficientnet_b0": (True, None),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_backward_at_the_net_size_and_norm_handling(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, SIZE, channels=1)
    has_bn, tokens = ARCHS[arch]
    assert model.net_size == SIZE and model.spec.net_size == SIZE
    patch_embed = getattr(model.net, "patch_embed", None)
    if patch_embed is not None:  # built for the net size, not timm's 224
        assert tuple(patch_embed.img_size) == (SIZE, SIZE)
    if tokens is not None:
        assert model.net.pos_embed.shape[1] == tokens
    x = torch.rand(4, 1, SIZE, SIZE)
    out = model.train()(x)
    assert out.shape == (4, 2)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    # BatchNorm recalibration and FedBN: real work for BatchNorm, nothing for LayerNorm
    assert bool(layers(model)) == has_bn and bool(personal_keys(model)) == has_bn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = recalibrate(model, DataLoader(TensorDataset(x, torch.zeros(4)), batch_size=2), torch.device("cpu"))
    assert seen == (4 if has_bn else 0)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert bool(changed) == has_bn and all("running" in k or "num_batches" in k for k in changed)

    # calibration folds the Youden cut into the 2-class linear head of every family
    _, fc = head(model)
    assert fc.out_features == 2
    with torch.no_grad():
        logits = model.eval()(x).numpy()
    _, shifted = fold_threshold(model, logits, np.array([0, 1, 0, 1]))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), shifted, atol=1e-5)


def _config(tmp_path: Path, synth_dir: Path, **overrides: object) -> Path:
    return write_config(tmp_path / "c.yaml", synth_dir, tmp_path / "run", **overrides)


def test_patch_size_not_dividing_the_net_size_is_refused_at_load(tmp_path: Path, synth_dir: Path) -> None:
    vit = {"federation.architectures": ["vit_small_patch16_224", "convnext_atto"]}
    vit["training.per_arch"] = {}  # type: ignore[assignment]
    with pytest.raises(
        ConfigError,
        match=r"data\.image_size: vit_small_patch16_224's patch size 16 does not "
        r"divide its net size 72; use 64 or 80",
    ):
        load_config(_config(tmp_path, synth_dir, **vit, **{"data.image_size": 72}))
    bad_net = {"vit_small_patch16_224": {"net_size": 100}}
    with pytest.raises(ConfigError, match=r"training\.per_arch\.vit_small_patch16_224\.net_size: .*divide"):
        load_config(_config(tmp_path, synth_dir, **{**vit, "training.per_arch": bad_net}))
    ok = {"vit_small_patch16_224": {"net_size": 80}}
    cfg = load_config(_config(tmp_path, synth_dir, **{**vit, "data.image_size": 72, "training.per_arch": ok}))
    assert cfg.training.net_size("vit_small_patch16_224") == 80
    with pytest.raises(
        ConfigError, match=r"data\.image_size: .*patch size 16 does not divide its net size 40"
    ):
        build_model("vit_small_patch16_224", 40)


def test_unknown_architecture_lists_the_closest_timm_names(tmp_path: Path, synth_dir: Path) -> None:
    path = _config(tmp_path, synth_dir, **{"federation.architectures": ["vit_small_patch16"]})
    with pytest.raises(
        ConfigError,
        match=r"'vit_small_patch16' is not a timm model name; close names: .*"
        r"vit_small_patch16_224",
    ):
        load_config(path)


def test_transfer_report_separates_cnn_to_vit_vit_to_cnn_and_within_family() -> None:
    """A hand-made matrix: each pair of families has its own rate, and the section shows each."""
    archs = {
        "r": "resnet50",
        "c": "convnext_atto",
        "v": "vit_small_patch16_224",
        "d": "deit_tiny_patch16_224",
    }
    info = {n: Info(n, a, "global") for n, a in archs.items()}
    fooled = {
        ("CNN", "CNN"): 10,
        ("CNN", "transformer"): 4,
        ("transformer", "CNN"): 6,
        ("transformer", "transformer"): 16,
    }
    cells = [
        Cell(s, t, 20, fooled[arch_family(archs[s]), arch_family(archs[t])], 1, s == t)
        for s in archs
        for t in archs
    ]
    m = Measurement("fgsm", 0.02, list(archs), list(archs), cells=cells)
    pairs = family_pairs(m, info, seed=0)
    assert {k: round(g.mean.value, 3) for k, g in pairs.items()} == {k: v / 20 for k, v in fooled.items()}
    assert pairs["CNN", "transformer"].n == 4 and pairs["CNN", "CNN"].n == 2  # white-box cells left out
    text = "\n".join(families_md(m, info, seed=0))
    assert "| CNN -> transformer | 20.0%" in text and "| transformer -> CNN | 30.0%" in text
    assert "| transformer -> transformer (within family) | 80.0%" in text
    cnn_only = {n: Info(n, "resnet50", "global") for n in archs}
    assert families_md(m, cnn_only, seed=0) == []  # the study's CNN-only reports stay as they were
