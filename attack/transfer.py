"""The transfer measurement.

For each source model: the pneumonia images of the held-out test sets that it classifies
correctly are attacked on it. For each target model (all of them, the source included):
transferability(source -> target) = images the target misclassifies after the attack
/ images of that attacked set the target classified correctly before it (the numerator
counts only images in the denominator).

Each model is loaded once. Crafting keeps each attack's compact code of its adversarial
images (FGSM: int8 signs, one byte per pixel), from which they are rebuilt exactly; each
target then probes every source's adversarial set in one streamed pass, without autograd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attack.attacks import Attack
from shared.checkpoint import ModelEntry
from shared.training import prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackSet:
    """The pneumonia-positive held-out test images, in [0, 1]."""

    images: torch.Tensor  # float32 [N, C, S, S]
    ids: tuple[str, ...]  # "<test manifest>/<image id>"

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class LoadedModel:
    entry: ModelEntry
    model: nn.Module


@dataclass
class Cell:
    source: str
    target: str
    n_correct_before: int
    n_misclassified_after: int

    @property
    def transferability(self) -> float | None:
        """None when the target got none of the attacked images right before the attack."""
        if self.n_correct_before == 0:
            return None
        return self.n_misclassified_after / self.n_correct_before


@dataclass
class Measurement:
    models: list[str]
    attacked: dict[str, list[str]] = field(default_factory=dict)  # source -> image ids
    cells: list[Cell] = field(default_factory=list)
    clean_correct: dict[str, int] = field(default_factory=dict)


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _stream(sizes: dict[str, int], batch: int) -> Iterator[list[tuple[str, slice]]]:
    """Full batches across sets: the sets' items in order, cut into pieces of `batch`
    (a piece lists which set and which slice of it). Small adversarial sets would
    otherwise each end in a part-filled batch."""
    piece: list[tuple[str, slice]] = []
    room = batch
    for name, n in sizes.items():
        start = 0
        while start < n:
            take = min(room, n - start)
            piece.append((name, slice(start, start + take)))
            start += take
            room -= take
            if room == 0:
                yield piece
                piece, room = [], batch
    if piece:
        yield piece


@torch.inference_mode()
def predict_labels(model: nn.Module, images: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Argmax predictions [N] (bool: pneumonia) without autograd, batched, AMP on CUDA."""
    out = torch.empty(len(images), dtype=torch.bool)
    amp = device.type == "cuda"
    for s in _batches(len(images), batch):
        x = images[s].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out[s] = (model(x).argmax(1) == 1).cpu()
    return out


def craft(
    model: nn.Module, attack: Attack, images: torch.Tensor, batch: int, device: torch.device
) -> torch.Tensor:
    """The attack's codes for `images` (all labelled pneumonia) on `model`."""
    parts = []
    for s in _batches(len(images), batch):
        x = images[s].to(device)
        y = torch.ones(len(x), dtype=torch.long, device=device)
        parts.append(attack.craft(model, x, y).cpu())
    return torch.cat(parts) if parts else torch.empty((0, *images.shape[1:]))


# Fused clean pass + crafting (CPU), for attacks that take the clean gradient: forward
# with autograd once, backward when at least this share of the batch is right. Costs,
# with f one forward and a backward ~2f: fused 3f, separate f + 3f*share. On CUDA the
# separate clean pass is much cheaper, so there it stays separate.
FUSE_MIN_CORRECT = 2 / 3


def _fused_batch(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which of `x` the model classifies as `y`, and the codes of those, from one forward
    pass. Per-sample gradients do not depend on the rest of the batch (eval mode); the
    loss is the mean over the correct images, as if they had been a batch of their own."""
    xg = x.detach().clone().requires_grad_(True)
    logits = model(xg)
    ok = logits.detach().argmax(1) == y
    if int(ok.sum()) == 0:
        return ok, None
    if float(ok.float().mean()) < FUSE_MIN_CORRECT:
        return ok, attack.craft(model, x[ok], y[ok])
    (grad,) = torch.autograd.grad(F.cross_entropy(logits[ok], y[ok]), xg)
    return ok, attack.craft(model, x[ok], y[ok], grad[ok])


def clean_and_craft(
    model: nn.Module, attack: Attack, images: torch.Tensor, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct [N] bool, codes of the correct images in order) for one source."""
    if device.type != "cpu" or not attack.uses_clean_gradient:
        correct = predict_labels(model, images, batch, device)
        return correct, craft(model, attack, images[correct], batch, device)
    correct = torch.empty(len(images), dtype=torch.bool)
    parts = []
    for s in _batches(len(images), batch):
        x = images[s]
        ok, code = _fused_batch(model, attack, x, torch.ones(len(x), dtype=torch.long))
        correct[s] = ok
        if code is not None:
            parts.append(code)
    codes = torch.cat(parts) if parts else torch.empty((0, *images.shape[1:]), dtype=torch.int8)
    return correct, codes


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    model = prepare(model, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def measure(
    models: list[LoadedModel],
    attack: Attack,
    data: AttackSet,
    batch: int,
    device: torch.device,
    progress: bool = True,
) -> Measurement:
    """Craft on every source, probe every target; return the counts of every cell."""
    from tqdm import tqdm

    names = [m.entry.name for m in models]
    result = Measurement(models=names)
    correct: dict[str, torch.Tensor] = {}
    attacked_idx: dict[str, torch.Tensor] = {}
    codes: dict[str, torch.Tensor] = {}
    for lm in tqdm(models, desc=f"crafting {attack.name}", unit="model", disable=not progress):
        net = _on(lm.model, device)
        name = lm.entry.name
        correct[name], codes[name] = clean_and_craft(net, attack, data.images, batch, device)
        idx = torch.nonzero(correct[name]).flatten()
        attacked_idx[name] = idx
        result.attacked[name] = [data.ids[i] for i in idx.tolist()]
        result.clean_correct[name] = int(correct[name].sum())
        log.info("crafted on %s: %d of %d pneumonia images attacked", name, len(idx), len(data))
        lm.model.to("cpu")
    for lm in tqdm(models, desc="probing targets", unit="model", disable=not progress):
        net = _on(lm.model, device)
        target = lm.entry.name
        adv_wrong = {src: torch.empty(len(attacked_idx[src]), dtype=torch.bool) for src in names}
        for piece in _stream({src: len(attacked_idx[src]) for src in names}, batch):
            x_adv = torch.cat(
                [attack.apply(data.images[attacked_idx[src][sl]], codes[src][sl]) for src, sl in piece]
            )
            wrong = ~predict_labels(net, x_adv, batch, device)
            at = 0
            for src, sl in piece:
                n = sl.stop - sl.start
                adv_wrong[src][sl] = wrong[at : at + n]
                at += n
        for source in names:
            before = correct[target][attacked_idx[source]]
            result.cells.append(
                Cell(source, target, int(before.sum()), int((before & adv_wrong[source]).sum()))
            )
        lm.model.to("cpu")
        log.info("probed %s with %d adversarial sets", target, len(names))
    return result
