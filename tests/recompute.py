"""An independent recomputation of the study's FGSM matrix from the stored models and the
raw image files, with plain torch, timm, safetensors, Pillow and pydicom: none of the
project's attack, model or data code. It follows the documented rules only:

- images: decoded from the files the test manifests list (PNG via Pillow, 8-bit
  MONOCHROME2 DICOM via pydicom), quantized to 8 bits, resized with Pillow's bicubic
  filter to the experiment size, divided by 255;
- models: timm architecture with 2 classes and the recorded input channels, weights from
  the safetensors file (keys under `net.`), inputs normalized with the recorded mean/std
  and bilinearly resized to the architecture's minimum size when smaller;
- crafting: slices of `batch` attack images; a source's clean predictions and FGSM
  gradients come from one forward pass over the slice when at least 2/3 of it is right,
  else from a forward pass over the right images alone;
- probing: float32 argmax; the control: per image, random signs drawn with a torch
  generator seeded from sha256("seed:control:image id").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

MIN_INPUT = {"inception_v3": 75}


def decode(path: Path, size: int) -> np.ndarray:
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        assert (
            ds.BitsStored == 8 and ds.PhotometricInterpretation == "MONOCHROME2" and "WindowCenter" not in ds
        )
        u8 = ds.pixel_array.astype(np.uint8)
    else:
        with Image.open(path) as im:
            u8 = np.asarray(im.convert("L"), dtype=np.uint8)
    if u8.shape != (size, size):
        u8 = np.asarray(Image.fromarray(u8, mode="L").resize((size, size), Image.Resampling.BICUBIC))
    return u8


class Plain(torch.nn.Module):
    def __init__(self, arch: str, entry: dict, file: Path) -> None:
        super().__init__()
        spec = entry["input"]
        self.net = timm.create_model(arch, num_classes=2, in_chans=spec["channels"])
        state = {k.removeprefix("net."): v for k, v in load_file(file).items()}
        self.net.load_state_dict(state)
        self.net.eval()
        self.mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1)
        self.std = torch.tensor(spec["std"]).view(1, -1, 1, 1)
        # the size the network sees, as the checkpoint records it (older ones: the minimum)
        self.size = spec.get("net_size") or max(spec["size"], MIN_INPUT.get(arch, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


def recompute(splits: Path, store: Path, results: dict) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(source, target) -> (n_correct_before, n_misclassified_after, n_control_misclassified)."""
    size, eps, seed = results["image_size"], results["eps"], results["seed"]
    batch = results["provenance"]["batch_size"]
    ids, xs = [], []
    for dataset in ("nih", "rsna"):
        m = json.loads((splits / f"test_{dataset}.json").read_text())
        for image_id, _patient, relpath, label in m["parts"]["test"]:
            if int(label) == 1:
                ids.append(f"test_{dataset}/{image_id}")
                xs.append(decode(splits / m["data_root"] / relpath, size))  # relative: the manifest's folder
    x = torch.from_numpy(np.stack(xs)).float().div(255.0).unsqueeze(1)
    manifest = json.loads((store / "manifest.json").read_text())
    models = {}
    for e in manifest["models"]:
        model = Plain(e["arch"], e, store / e["file"])
        for p in model.parameters():
            p.requires_grad_(False)
        models[e["name"]] = model
    one = torch.ones(len(x), dtype=torch.long)
    correct, adv = {}, {}
    for name, model in models.items():
        ok_all, adv_parts = [], []
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].clone().requires_grad_(True)
            logits = model(xb)
            ok = logits.detach().argmax(1) == 1
            ok_all.append(ok)
            if not ok.any():
                continue
            if ok.float().mean() >= 2 / 3:
                (g,) = torch.autograd.grad(F.cross_entropy(logits[ok], one[: len(xb)][ok]), xb)
                g = g[ok]
            else:
                xr = x[i : i + batch][ok].clone().requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(xr), one[: len(xr)]), xr)
            adv_parts.append(torch.clamp(x[i : i + batch][ok] + eps * g.sign(), 0, 1))
        correct[name] = torch.cat(ok_all)
        adv[name] = torch.cat(adv_parts) if adv_parts else x[:0]
    control = []
    for k, image_id in enumerate(ids):
        digest = hashlib.sha256(f"{seed}:control:{image_id}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        signs = torch.randint(0, 2, x[k].shape, generator=g).float() * 2 - 1
        control.append(torch.clamp(x[k] + eps * signs, 0, 1))
    noisy = torch.stack(control)
    counts = {}
    with torch.no_grad():
        for target, model in models.items():
            ctrl_wrong = torch.cat(
                [model(noisy[i : i + batch]).argmax(1) != 1 for i in range(0, len(x), batch)]
            )
            for source in models:
                idx = torch.nonzero(correct[source]).flatten()
                before = correct[target][idx]
                wrong = (
                    torch.cat(
                        [model(adv[source][i : i + batch]).argmax(1) != 1 for i in range(0, len(idx), batch)]
                    )
                    if len(idx)
                    else before
                )
                counts[source, target] = (
                    int(before.sum()),
                    int((before & wrong).sum()),
                    int((before & ctrl_wrong[idx]).sum()),
                )
    return counts
