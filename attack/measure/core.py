"""The transfer measurement, for any registered attack and any set of sources.

The study's definitions: a source (one model, or an ensemble of surrogates) attacks the
pneumonia images of the held-out test sets that it classifies correctly (a universal
attack: those of the held-out part; the disjoint fit part trains the perturbation). For
every target, transferability(source -> target) = images the target misclassifies after
the attack / images of that attacked set the target classified correctly before it. Beside
each count: the same count for random-sign noise at the same eps on the same images (the
control), so a reader sees the attack's effect over noise.

Every model is held once; a target's clean and control predictions are computed once and
reused by every attack and threat model (`Probe`). Predictions that decide a count run in
float32 unless bfloat16 is chosen explicitly (then recorded).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from attack.methods.surrogate import Surrogate
from shared.config.experiment import ExperimentConfig
from shared.ml.training import prepare
from shared.seeds import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackSet:
    """The pneumonia-positive held-out test images, in [0, 1]."""

    images: torch.Tensor  # float32 [N, C, S, S]
    ids: tuple[str, ...]  # "<test manifest>/<image id>"

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Target:
    """A model that is probed (every model of the store)."""

    name: str
    arch: str
    kind: str
    site: str | None
    model: nn.Module


@dataclass(frozen=True)
class Source:
    """What an attacker crafts on: `members` names the models of the surrogate."""

    name: str
    arch: str  # the architecture, or "ensemble"
    kind: str  # global, local, insider, outsider
    members: tuple[str, ...]
    surrogate: Surrogate


@dataclass(frozen=True)
class Settings:
    batch: int
    device: torch.device
    dtype: torch.dtype  # of the predictions that decide counts
    seed: int
    fit_fraction: float  # universal attacks: the share of images they are fitted on
    control: bool = True  # count random-sign noise at the same eps beside every cell
    # the shards a measurement deals its models and sources to (attack.devices; a device
    # listed twice is two shards on it); empty: `device` alone
    devices: tuple[torch.device, ...] = ()

    @property
    def shards(self) -> tuple[torch.device, ...]:
        return self.devices or (self.device,)

    def on(self, device: torch.device) -> Settings:
        """These settings on one device (one shard's work)."""
        return replace(self, device=device, devices=())


@dataclass
class Cell:
    source: str
    target: str
    n_correct_before: int
    n_misclassified_after: int
    n_control_misclassified: int | None
    white_box: bool
    # the shuffled-perturbation control: the same adversarial perturbation with its pixels
    # permuted (norm and histogram kept), on the same images
    n_shuffled_misclassified: int | None = None
    # universal attacks: the fooling rate, n_fooled of n_fooling_images (every held-out
    # attack image, right or wrong before) whose prediction the perturbation changed
    n_fooling_images: int | None = None
    n_fooled: int | None = None

    @property
    def transferability(self) -> float | None:
        """None when the target got none of the attacked images right before the attack."""
        if self.n_correct_before == 0:
            return None
        return self.n_misclassified_after / self.n_correct_before


@dataclass
class Measurement:
    attack: str
    eps: float
    sources: list[str]
    targets: list[str]
    attacked: dict[str, list[str]] = field(default_factory=dict)  # source -> image ids
    fit: dict[str, list[str]] = field(default_factory=dict)  # universal: source -> fit image ids
    code_digest: dict[str, str] = field(default_factory=dict)  # source -> sha256 of its code
    cells: list[Cell] = field(default_factory=list)
    clean_correct: dict[str, int] = field(default_factory=dict)  # target -> on the attack set
    perceptual: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> mean L2, ...


def batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def stream(sizes: dict[str, int], batch: int) -> Iterator[list[tuple[str, slice]]]:
    """Full batches across sets: the sets' items in order, cut into pieces of `batch`
    (a piece lists which set and which slice of it). Small sets would otherwise each end
    in a part-filled batch."""
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
def predict_pneumonia(model: nn.Module, images: torch.Tensor, s: Settings) -> torch.Tensor:
    """Argmax predictions [N] (True: pneumonia) without autograd, batched."""
    out = torch.empty(len(images), dtype=torch.bool)
    low = s.dtype != torch.float32
    for sl in batches(len(images), s.batch):
        x = images[sl].to(s.device, non_blocking=True)
        with torch.autocast(s.device.type, dtype=s.dtype, enabled=low):
            out[sl] = (model(x).argmax(1) == 1).cpu()
    return out


def random_sign(x: torch.Tensor, eps: float, image_id: str, seed: int) -> torch.Tensor:
    """The control: x + eps * (a random sign per pixel), clipped; seeded by the image."""
    g = torch.Generator().manual_seed(derive_seed(seed, "attack", "control", image_id))
    signs = torch.randint(0, 2, x.shape, generator=g).to(x.dtype).mul_(2).sub_(1)
    return torch.clamp(x + eps * signs, 0.0, 1.0)


def shuffled(clean: torch.Tensor, adv: torch.Tensor, image_id: str, seed: int) -> torch.Tensor:
    """The shuffled-perturbation control of one image: clean + (adv - clean) with its pixels
    (every channel and position) permuted, clipped; the permutation is seeded by the image,
    so every source and target sees the same one."""
    g = torch.Generator().manual_seed(derive_seed(seed, "attack", "shuffle", image_id))
    delta = (adv - clean).flatten()
    return torch.clamp(clean + delta[torch.randperm(len(delta), generator=g)].view_as(clean), 0.0, 1.0)


def fit_mask(ids: tuple[str, ...], fraction: float, seed: int) -> torch.Tensor:
    """Which attack images universal attacks are fitted on: a seeded share of each test
    set (the rest is held out, and only held-out images are counted)."""
    mask = torch.zeros(len(ids), dtype=torch.bool)
    for dataset in sorted({i.split("/")[0] for i in ids}):
        idx = [k for k, i in enumerate(ids) if i.startswith(dataset + "/")]
        order = torch.randperm(
            len(idx), generator=torch.Generator().manual_seed(derive_seed(seed, "attack", "fit", dataset))
        )
        mask[[idx[k] for k in order[: round(len(idx) * fraction)].tolist()]] = True
    return mask


class Probe:
    """Each target's clean predictions on the attack set and its predictions on the
    random-sign control, computed once and shared by every attack and threat model.

    Each target lives on one shard (`s.shards` round-robin in target order, `shard`), where
    every prediction of it is made; a source that needs a model on another shard crafts on
    a copy of it there (`on_shard`)."""

    def __init__(self, targets: list[Target], data: AttackSet, s: Settings) -> None:
        self.targets = {t.name: t for t in targets}
        self.data, self.s = data, s
        self.correct: dict[str, torch.Tensor] = {}
        self.control: dict[tuple[str, float], torch.Tensor] = {}
        n = len(s.shards)
        self.shard = {t.name: i % n for i, t in enumerate(targets)}
        # each module's shard (a target's, and a foreign surrogate's from its first use) and
        # its copies on other shards; modules are keys by identity
        self.home: dict[nn.Module, int] = {t.model: self.shard[t.name] for t in targets}
        self.copies: dict[tuple[nn.Module, int], nn.Module] = {}

    def settings(self, name: str) -> Settings:
        """The settings on the device of target `name`."""
        return self.s.on(self.s.shards[self.shard[name]])

    def model(self, name: str) -> nn.Module:
        return on_device(self.targets[name].model, self.s.shards[self.shard[name]])

    def on_shard(self, module: nn.Module, shard: int) -> nn.Module:
        """`module` on shard `shard`'s device: itself where it lives (a module without a
        shard yet lives on this one from now on), else its copy there, made once."""
        home = self.home.setdefault(module, shard)
        device = self.s.shards[shard]
        if home == shard:
            return on_device(module, device)
        key = (module, shard)
        if key not in self.copies:
            self.copies[key] = on_device(copy.deepcopy(module), device)
        return self.copies[key]

    def clean(self, name: str) -> torch.Tensor:
        """[N] bool: the target classifies the image as pneumonia (correct)."""
        if name not in self.correct:
            self.correct[name] = predict_pneumonia(self.model(name), self.data.images, self.settings(name))
        return self.correct[name]

    def control_wrong(self, name: str, eps: float) -> torch.Tensor:
        """[N] bool: the target misclassifies the image under random-sign noise (only
        evaluated where it was correct before; False elsewhere)."""
        key = (name, eps)
        if key not in self.control:
            ok = torch.nonzero(self.clean(name)).flatten().tolist()
            noisy = [random_sign(self.data.images[i], eps, self.data.ids[i], self.s.seed) for i in ok]
            wrong = torch.zeros(len(self.data), dtype=torch.bool)
            if ok:
                wrong[ok] = ~predict_pneumonia(self.model(name), torch.stack(noisy), self.settings(name))
            self.control[key] = wrong
        return self.control[key]


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    model = prepare(model, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def is_member(source: Source, probe: Probe) -> bool:
    return len(source.members) == 1 and source.members[0] == source.name and source.name in probe.targets


@dataclass(frozen=True)
class SuiteRequest:
    """Which attacks, threat models and budgets to measure (from the config or flags)."""

    attacks: tuple[str, ...]
    threats: tuple[str, ...]
    sweep_eps: tuple[float, ...]
    sweep_attacks: tuple[str, ...]
    # where the outsider's surrogates are kept (None: the suite's own folder); the study
    # shares one folder across its variants, whose public split and seed are the same
    outsider_dir: Path | None = None

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> SuiteRequest:
        s = cfg.attack.suite
        return cls(s.attacks, s.threats, s.sweep_eps, s.sweep_attacks)
