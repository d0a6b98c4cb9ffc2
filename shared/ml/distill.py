"""FedDF's server step (Lin et al., NeurIPS 2020): ensemble distillation on unlabeled data.

The teacher is the ensemble of the sites' models, every architecture's: per image, the
mean of their logits (the paper's averaged logits; a softmax of that mean at the
temperature is the target). The student, one architecture's averaged model, is trained
for a number of Adam steps on random batches of the unlabeled images to minimise
KL(teacher || student) at that temperature, scaled by T^2 (Hinton et al., 2015), its
learning rate annealed to 0 on a cosine (the paper's schedule). As the paper stops early
on held-out loss, the loss over every image is measured ten times along the way and the
best student is kept: the average itself when no step improved on it (each figure kept).

The student stays in eval mode while it learns: its BatchNorm statistics stay the ones
its sites' training left (the public images move its weights, not its normalisation), and
the loss it descends is the loss it is measured on, before and after, over every image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


def _images(data: Dataset, index: Sequence[int]) -> torch.Tensor:
    return torch.stack([data[int(i)][0] for i in index])


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.no_grad()
def logits_of(model: nn.Module, data: Dataset, batch_size: int, device: torch.device) -> torch.Tensor:
    """The model's logits [N, classes] (float32, on the CPU) over `data`'s images, in order,
    in eval mode. `data` yields (image, label); the labels are never read."""
    model.eval()
    n = len(data)  # type: ignore[arg-type]
    return torch.cat([model(_images(data, b).to(device)).float().cpu() for b in _batches(n, batch_size)])


def ensemble_logits(
    models: Sequence[nn.Module], data: Dataset, batch_size: int, device: torch.device
) -> torch.Tensor:
    """FedDF's teacher: per image, the mean of the models' logits (uniform weights)."""
    if not models:
        raise ValueError("ensemble_logits: no models")
    return torch.stack([logits_of(m, data, batch_size, device) for m in models]).mean(0)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, the batch's mean."""
    t = temperature
    target = F.softmax(teacher / t, dim=1)
    return F.kl_div(F.log_softmax(student / t, dim=1), target, reduction="batchmean") * (t * t)


@torch.no_grad()
def loss_over(
    model: nn.Module,
    data: Dataset,
    teacher: torch.Tensor,
    temperature: float,
    batch_size: int,
    device: torch.device,
) -> float:
    """The distillation loss over every image of `data` (eval mode), image-weighted."""
    student = logits_of(model, data, batch_size, device)
    return float(distillation_loss(student, teacher, temperature))


@dataclass(frozen=True)
class Distilled:
    """One distillation: the loss over every image before, of the student kept (`after`),
    and at the last step; the steps taken and the step of the student kept (0: none
    improved on the starting model, which is kept)."""

    before: float
    after: float
    last: float
    steps: int
    kept_step: int


def distil(
    model: nn.Module,
    data: Dataset,
    teacher: torch.Tensor,
    steps: int,
    lr: float,
    temperature: float,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> Distilled:
    """Train `model` in place towards `teacher` (its logits per image of `data`, in order)
    for `steps` Adam steps on batches drawn at random (seeded) from `data`; `model` ends
    as the best student measured (see the module's docstring)."""
    n = len(data)  # type: ignore[arg-type]
    if n == 0 or teacher.shape[0] != n:
        raise ValueError(f"distil: {n} images but teacher logits for {teacher.shape[0]}")
    model.to(device)
    before = loss_over(model, data, teacher, temperature, batch_size, device)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    size, every = min(batch_size, n), max(1, steps // 10)
    best, kept_step, kept = before, 0, _copy(model)
    now = before
    for step in range(1, steps + 1):
        model.eval()  # see the module's docstring
        index = torch.randperm(n, generator=g)[:size]
        out = model(_images(data, index.tolist()).to(device))
        loss = distillation_loss(out.float(), teacher[index].to(device), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % every == 0 or step == steps:
            now = loss_over(model, data, teacher, temperature, batch_size, device)
            if now < best:
                best, kept_step, kept = now, step, _copy(model)
    model.load_state_dict(kept)
    return Distilled(before, best, now, steps, kept_step)


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
