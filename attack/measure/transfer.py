"""One attack from every source onto every target: the counts of every cell.

Crafting keeps each attack's compact code of its adversarial images (FGSM: int8 signs;
iterative attacks: the images; universal attacks: one delta), from which they are rebuilt
exactly; each target then probes every source's adversarial set in one streamed pass,
only on the images it classified correctly before (no other image can count), and, with
the controls on, the same images with each perturbation's pixels shuffled. Universal
perturbations are also probed on every held-out image (the fooling rate), and every
adversarial set's mean L2, L-infinity, PSNR and SSIM against the clean images is kept.
"""

from __future__ import annotations

import logging

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
from attack.methods.registry import Attack
from shared.seeds import derive_seed

log = logging.getLogger(__name__)


def _craft_source(
    src: Source, attack: Attack, probe: Probe, s: Settings, fit: torch.Tensor | None, m: Measurement
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(indices of the attacked images, their code) for one source; code None when the
    source got no image right (an empty row)."""
    data = probe.data
    gen = torch.Generator().manual_seed(derive_seed(s.seed, "attack", attack.name, attack.eps, src.name))
    member = is_member(src, probe)
    fusable = attack.uses_clean_gradient and not attack.universal and s.device.type == "cpu"
    if member and fusable and src.name not in probe.correct:
        correct, code = clean_and_craft(probe.model(src.name), attack, data.images, s, gen)
        probe.correct[src.name] = correct
        idx = torch.nonzero(correct).flatten()
        return idx, code if len(idx) else None
    if member:
        correct = probe.clean(src.name)
        surrogate = src.surrogate  # the target's own model, already on the device
    else:
        surrogate = on_device(src.surrogate, s.device)  # type: ignore[assignment]
        correct = predict_pneumonia(surrogate, data.images, s)
    if fit is None:
        idx = torch.nonzero(correct).flatten()
        return idx, craft(src.surrogate, attack, data.images[idx], s, gen) if len(idx) else None
    fit_idx = torch.nonzero(correct & fit).flatten()
    idx = torch.nonzero(correct & ~fit).flatten()
    m.fit[src.name] = [data.ids[i] for i in fit_idx.tolist()]
    if len(fit_idx) == 0 or len(idx) == 0:
        return idx, None
    return idx, craft(src.surrogate, attack, data.images[fit_idx], s, gen)


def measure(
    sources: list[Source], attack: Attack, probe: Probe, s: Settings, progress: bool = True
) -> Measurement:
    """Craft on every source, probe every target; the counts of every cell."""
    data = probe.data
    targets = list(probe.targets)
    m = Measurement(attack.name, attack.eps, [src.name for src in sources], targets)
    fit = fit_mask(data.ids, s.fit_fraction, s.seed) if attack.universal else None
    attacked: dict[str, torch.Tensor] = {}
    codes: dict[str, torch.Tensor | None] = {}
    label = f"crafting {attack.name} (eps {attack.eps})"
    for src in tqdm(sources, desc=label, unit="source", disable=not progress):
        attacked[src.name], codes[src.name] = _craft_source(src, attack, probe, s, fit, m)
        m.attacked[src.name] = [data.ids[i] for i in attacked[src.name].tolist()]
        m.code_digest[src.name] = digest(codes[src.name])
        code = codes[src.name]
        if code is None:
            log.warning("%s on %s: no correctly classified image to attack: empty row", attack.name, src.name)
        else:
            clean = data.images[attacked[src.name]]
            m.perceptual[src.name] = perceptual(clean, attack.apply(clean, code)).to_json()
    for name in tqdm(targets, desc="probing targets", unit="model", disable=not progress):
        before = probe.clean(name)
        m.clean_correct[name] = int(before.sum())
        control = probe.control_wrong(name, attack.eps) if s.control else None
        wrong, shuffled_wrong = _probe(name, attack, probe, s, attacked, codes, before)
        fooled = _fooling(name, attack, probe, s, codes, fit) if fit is not None else {}
        for src in sources:
            idx = attacked[src.name]
            ok = before[idx]
            n_fool, n_fooled = fooled.get(src.name, (None, None))
            m.cells.append(
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
    return m


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
