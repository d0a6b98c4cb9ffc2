"""One attack from every source onto every target: the counts of every cell.

Crafting keeps each attack's compact code of its adversarial images (FGSM: int8 signs;
iterative attacks: the images; universal attacks: one delta), from which they are rebuilt
exactly; each target then probes every source's adversarial set in one streamed pass,
only on the images it classified correctly before (no other image can count), and, with
the controls on, the same images with each perturbation's pixels shuffled. Universal
perturbations are also probed on every held-out image (the fooling rate), and every
adversarial set's mean L2, L-infinity, PSNR and SSIM against the clean images is kept.
With several devices (`attack.devices`) the sources craft, and then the targets probe,
each on its shard (attack.measure.shards), with the counts of one device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from attack.measure.core import (
    Cell,
    Measurement,
    Probe,
    Settings,
    Source,
    fit_mask,
    is_member,
    on_device,
    predict_pneumonia,
    shuffled,
    stream,
)
from attack.measure.crafting import clean_and_craft, craft, digest
from attack.measure.perceptual import perceptual
from attack.measure.shards import reproducible_kernels, run_sharded
from attack.methods.registry import Attack
from attack.methods.surrogate import Surrogate
from attack.methods.universal import Universal
from shared.seeds import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placed:
    """A source ready to craft: its shard, and its surrogate on that shard's device."""

    source: Source
    shard: int
    surrogate: Surrogate


@dataclass(frozen=True)
class Crafted:
    """What one source crafted: the indices of the attacked images and their code (None
    when the source got no image right: an empty row), a universal attack's fit images,
    the adversarial set's perceptual figures."""

    idx: torch.Tensor
    code: torch.Tensor | None
    fit: list[str] | None
    perceptual: dict[str, float] | None


def _place(sources: list[Source], probe: Probe) -> list[Placed]:
    """Every source's shard and surrogate there, before any shard starts (a thread moves
    or copies no model): every target on its shard first; a member source crafts where its
    model lives, any other on the shards round-robin in source order, on copies of the
    members that live elsewhere."""
    for name in probe.targets:
        probe.model(name)
    n = len(probe.s.shards)
    placed = []
    for i, src in enumerate(sources):
        if is_member(src, probe):
            placed.append(Placed(src, probe.shard[src.name], src.surrogate))
            continue
        shard = i % n
        members = [probe.on_shard(m, shard) for m in src.surrogate.members]
        surrogate = src.surrogate
        if any(a is not b for a, b in zip(members, src.surrogate.members, strict=True)):
            surrogate = Surrogate(members, src.surrogate.mode)
            surrogate.scales = src.surrogate.scales
        on_device(surrogate, probe.s.shards[shard])  # in place: frozen, eval, on the device
        placed.append(Placed(src, shard, surrogate))
    return placed


def _craft_source(p: Placed, attack: Attack, probe: Probe, s: Settings, fit: torch.Tensor | None) -> Crafted:
    """One source's adversarial code, crafted on its shard (`s` on that shard's device)."""
    src, surrogate, data = p.source, p.surrogate, probe.data
    gen = torch.Generator().manual_seed(derive_seed(s.seed, "attack", attack.name, attack.eps, src.name))
    member = is_member(src, probe)
    fusable = attack.uses_clean_gradient and not attack.universal and s.device.type == "cpu"
    fit_ids = None
    if member and fusable and src.name not in probe.correct:
        correct, code = clean_and_craft(probe.model(src.name), attack, data.images, s, gen)
        probe.correct[src.name] = correct
        idx = torch.nonzero(correct).flatten()
        return _crafted(attack, probe, idx, code if len(idx) else None, fit_ids)
    correct = probe.clean(src.name) if member else predict_pneumonia(surrogate, data.images, s)
    if fit is None:
        idx = torch.nonzero(correct).flatten()
        crafted = craft(surrogate, attack, data.images[idx], s, gen) if len(idx) else None
        return _crafted(attack, probe, idx, crafted, fit_ids)
    fit_idx = torch.nonzero(correct & fit).flatten()
    idx = torch.nonzero(correct & ~fit).flatten()
    fit_ids = [data.ids[i] for i in fit_idx.tolist()]
    if len(fit_idx) == 0 or len(idx) == 0:
        return _crafted(attack, probe, idx, None, fit_ids)
    return _crafted(attack, probe, idx, craft(surrogate, attack, data.images[fit_idx], s, gen), fit_ids)


def _crafted(
    attack: Attack, probe: Probe, idx: torch.Tensor, code: torch.Tensor | None, fit: list[str] | None
) -> Crafted:
    if code is None:
        return Crafted(idx, None, fit, None)
    clean = probe.data.images[idx]
    return Crafted(idx, code, fit, perceptual(clean, attack.apply(clean, code)).to_json())


def warn_if_short(attack: Attack, n_fit: int) -> None:
    """Say so when a universal perturbation's steps cannot reach eps (its figures then
    measure a smaller perturbation than the budget says)."""
    if not isinstance(attack, Universal):
        return
    reach = attack.reach(n_fit)
    if reach is not None and reach < attack.eps - 1e-12:
        log.warning(
            "%s: %d epochs over %d fit images in minibatches of %d, sign steps of %.3g: the "
            "perturbation reaches at most %.3g of eps %.3g; raise attack.universal.epochs or "
            "step_fraction, or lower its batch_size",
            attack.name,
            attack.epochs,
            n_fit,
            attack.batch_size,
            attack.step_size,
            reach,
            attack.eps,
        )


def measure(
    sources: list[Source], attack: Attack, probe: Probe, s: Settings, progress: bool = True
) -> Measurement:
    """Craft on every source, probe every target; the counts of every cell. With several
    shards (the probe's `devices`) each source crafts, then each target probes, on its
    shard, with `s` on that shard's device."""
    data = probe.data
    targets = list(probe.targets)
    m = Measurement(attack.name, attack.eps, [src.name for src in sources], targets)
    fit = fit_mask(data.ids, s.fit_fraction, s.seed) if attack.universal else None
    if fit is not None:
        warn_if_short(attack, int(fit.sum()))
    shards = probe.s.shards
    with reproducible_kernels():
        placed = _place(sources, probe)
        label = f"crafting {attack.name} (eps {attack.eps})"
        with tqdm(total=len(sources), desc=label, unit="source", disable=not progress) as bar:
            crafted = run_sharded(
                placed,
                lambda p: p.shard,
                lambda p: _craft_source(p, attack, probe, s.on(shards[p.shard]), fit),
                shards,
                lambda: bar.update(),
            )
        attacked = {src.name: c.idx for src, c in zip(sources, crafted, strict=True)}
        codes = {src.name: c.code for src, c in zip(sources, crafted, strict=True)}
        for src, c in zip(sources, crafted, strict=True):
            if c.fit is not None:
                m.fit[src.name] = c.fit
            m.attacked[src.name] = [data.ids[i] for i in c.idx.tolist()]
            m.code_digest[src.name] = digest(c.code)
            if c.perceptual is None:
                log.warning(
                    "%s on %s: no correctly classified image to attack: empty row", attack.name, src.name
                )
            else:
                m.perceptual[src.name] = c.perceptual
        with tqdm(total=len(targets), desc="probing targets", unit="model", disable=not progress) as bar:
            rows = run_sharded(
                targets,
                lambda name: probe.shard[name],
                lambda name: _target_row(
                    name, sources, attack, probe, s.on(shards[probe.shard[name]]), attacked, codes, fit
                ),
                shards,
                lambda: bar.update(),
            )
    for name, (n_correct, cells) in zip(targets, rows, strict=True):
        m.clean_correct[name] = n_correct
        m.cells += cells
    return m


def _target_row(
    name: str,
    sources: list[Source],
    attack: Attack,
    probe: Probe,
    s: Settings,
    attacked: dict[str, torch.Tensor],
    codes: dict[str, torch.Tensor | None],
    fit: torch.Tensor | None,
) -> tuple[int, list[Cell]]:
    """Target `name`'s clean count on the attack set and its cell of every source, probed
    on its shard (`s` on its device)."""
    before = probe.clean(name)
    control = probe.control_wrong(name, attack.eps) if s.control else None
    wrong, shuffled_wrong = _probe(name, attack, probe, s, attacked, codes, before)
    fooled = _fooling(name, attack, probe, s, codes, fit) if fit is not None else {}
    cells = []
    for src in sources:
        idx = attacked[src.name]
        ok = before[idx]
        n_fool, n_fooled = fooled.get(src.name, (None, None))
        cells.append(
            Cell(
                src.name,
                name,
                int(ok.sum()),
                int((ok & wrong[src.name]).sum()),
                None if control is None else int((ok & control[idx]).sum()),
                white_box=name in src.members,
                n_shuffled_misclassified=None
                if control is None
                else int((ok & shuffled_wrong[src.name]).sum()),
                n_fooling_images=n_fool,
                n_fooled=n_fooled,
            )
        )
    return int(before.sum()), cells


def _fooling(
    name: str,
    attack: Attack,
    probe: Probe,
    s: Settings,
    codes: dict[str, torch.Tensor | None],
    fit: torch.Tensor,
) -> dict[str, tuple[int, int]]:
    """Universal perturbations: per source, (held-out images, those whose prediction by
    `name` the perturbation changed), right or wrong before."""
    held = probe.data.images[~fit]
    before = probe.clean(name)[~fit]
    model = probe.model(name)
    out = {}
    for src, code in codes.items():
        if code is None:
            continue
        after = predict_pneumonia(model, attack.apply(held, code), s)
        out[src] = (len(held), int((after != before).sum()))
    return out


def _probe(
    name: str,
    attack: Attack,
    probe: Probe,
    s: Settings,
    attacked: dict[str, torch.Tensor],
    codes: dict[str, torch.Tensor | None],
    before: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per source: [attacked] bool, the target misclassifies the adversarial image (probed
    only where it was right before); and the same for the shuffled-perturbation control
    (with the controls on; all False otherwise)."""
    images, ids = probe.data.images, probe.data.ids
    wrong = {src: torch.zeros(len(idx), dtype=torch.bool) for src, idx in attacked.items()}
    shuffled_wrong = {src: torch.zeros(len(idx), dtype=torch.bool) for src, idx in attacked.items()}
    positions = {
        src: torch.nonzero(before[idx]).flatten()
        if codes[src] is not None
        else torch.zeros(0, dtype=torch.long)
        for src, idx in attacked.items()
    }
    model = probe.model(name)
    for piece in stream({src: len(pos) for src, pos in positions.items()}, s.batch):
        parts, controls = [], []
        for src, sl in piece:
            pos = positions[src][sl]
            code = codes[src]
            assert code is not None
            clean = images[attacked[src][pos]]
            adv = attack.apply(clean, code if attack.universal else code[pos])
            parts.append(adv)
            if s.control:
                who = [ids[i] for i in attacked[src][pos].tolist()]
                controls += [shuffled(c, a, i, s.seed) for c, a, i in zip(clean, adv, who, strict=True)]
        out = ~predict_pneumonia(model, torch.cat(parts), s)
        out_shuffled = ~predict_pneumonia(model, torch.stack(controls), s) if controls else None
        at = 0
        for src, sl in piece:
            n = sl.stop - sl.start
            wrong[src][positions[src][sl]] = out[at : at + n]
            if out_shuffled is not None:
                shuffled_wrong[src][positions[src][sl]] = out_shuffled[at : at + n]
            at += n
    return wrong, shuffled_wrong
