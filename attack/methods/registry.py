"""The attack registry. Attacks take and return [0, 1] image tensors (normalization lives
inside the models), with eps an L-infinity budget in that pixel space. Each attack holds
only its maths; the measurement (attack.measure.core) owns batching, devices and the split of
the attack images, and works with any attack through the `Attack` protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from attack.methods.iterative import Iterative
from attack.methods.surrogate import OBJECTIVES, Objective, Surrogate
from attack.methods.universal import Universal
from shared.config.attack import AttackConfig
from shared.errors import AttackError


class Attack(Protocol):
    """What the measurement needs from an attack.

    `craft` returns a code of the adversarial images and `apply` rebuilds them exactly
    from the clean images and the code (FGSM's code is one int8 sign per pixel; an
    iterative attack's code is its images; a universal perturbation's code is one delta
    for every image). The measurement holds the codes of every source until every target
    has probed them.

    - `universal`: the attack learns one code from a *fit* part of the images, and is
      measured on the disjoint *held-out* part (images it never saw).
    - `uses_clean_gradient`: `craft` can take the gradient of the surrogate's loss at the
      clean images, which the measurement gets almost for free from its clean pass.
    - `random`: `craft` draws from the generator it is given (random start, input
      diversity, minibatch order)."""

    @property
    def name(self) -> str: ...

    @property
    def eps(self) -> float: ...

    @property
    def universal(self) -> bool: ...

    @property
    def uses_clean_gradient(self) -> bool: ...

    @property
    def objective(self) -> Objective: ...

    def craft(
        self,
        surrogate: Surrogate,
        x: torch.Tensor,
        y: torch.Tensor,
        grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class FGSM:
    """x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1) (Goodfellow et al., 2015).
    Its code is the signed gradient as int8 in {-1, 0, 1}: one byte per pixel."""

    eps: float
    objective: Objective = "ce"
    name: str = "fgsm"
    universal: ClassVar[bool] = False
    uses_clean_gradient: ClassVar[bool] = True

    def craft(
        self,
        surrogate: Surrogate,
        x: torch.Tensor,
        y: torch.Tensor,
        grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        g = surrogate.input_gradient(x, y, self.objective) if grad is None else grad
        return g.sign().to(torch.int8)

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + self.eps * code.to(x.dtype), 0.0, 1.0)


Factory = Callable[[float, AttackConfig, Objective], Attack]
MARGIN = "+margin"  # the suffix that swaps an attack's cross-entropy for the margin loss


def _iterative(
    name: str,
    random_start: bool = False,
    momentum: bool = False,
    diverse: bool = False,
    *,
    nesterov: bool = False,
    scales: bool = False,
    variance: bool = False,
    translation: bool = False,
    skip: bool = False,
    blocks: bool = False,
) -> Factory:
    def make(eps: float, cfg: AttackConfig, objective: Objective) -> Attack:
        it = cfg.iterative
        return Iterative(
            name=name,
            eps=eps,
            steps=it.steps,
            step_size=eps * it.step_fraction,
            random_start=random_start,
            normalize=momentum or diverse,
            decay=it.decay if momentum else 0.0,
            diversity_prob=it.diversity_prob if diverse else 0.0,
            resize_rate=it.resize_rate,
            nesterov=nesterov,
            scale_copies=it.scale_copies if scales else 1,
            variance_samples=it.variance_samples if variance else 0,
            variance_bound=it.variance_bound,
            kernel_size=it.kernel_size if translation else 0,
            kernel_sigma=it.kernel_sigma,
            skip_gamma=it.skip_gamma if skip else 1.0,
            block_copies=it.block_copies if blocks else 0,
            blocks=it.blocks,
            max_angle=it.max_angle,
            objective=objective,
        )

    return make


def _universal(name: str, targeted: bool) -> Factory:
    def make(eps: float, cfg: AttackConfig, objective: Objective) -> Attack:
        u = cfg.universal
        return Universal(
            name=name,
            eps=eps,
            targeted=targeted,
            epochs=u.epochs,
            batch_size=u.batch_size,
            step_size=eps * u.step_fraction,
            optimizer=u.optimizer,
            objective=objective,
        )

    return make


REGISTRY: dict[str, Factory] = {
    "fgsm": lambda eps, cfg, objective: FGSM(eps, objective),
    "bim": _iterative("bim"),  # I-FGSM (Kurakin et al., 2017)
    "pgd": _iterative("pgd", random_start=True),  # Madry et al., 2018
    "mifgsm": _iterative("mifgsm", momentum=True),  # Dong et al., 2018
    "difgsm": _iterative("difgsm", diverse=True),  # Xie et al., 2019
    "midi": _iterative("midi", momentum=True, diverse=True),
    "nifgsm": _iterative("nifgsm", momentum=True, nesterov=True),  # Lin et al., 2020
    "sinifgsm": _iterative("sinifgsm", momentum=True, nesterov=True, scales=True),  # Lin et al., 2020
    "vmifgsm": _iterative("vmifgsm", momentum=True, variance=True),  # Wang & He, 2021
    "tifgsm": _iterative("tifgsm", momentum=True, translation=True),  # TIM (Dong et al., 2019)
    "sgm": _iterative("sgm", momentum=True, skip=True),  # on MI-FGSM (Wu et al., 2020)
    "bsr": _iterative("bsr", momentum=True, blocks=True),  # on MI-FGSM (Wang et al., 2024)
    "uap": _universal("uap", targeted=False),  # SGD-UAP (Shafahi et al., 2020)
    "uap-targeted": _universal("uap-targeted", targeted=True),  # towards "no pneumonia"
}


def parse_attack_name(name: str) -> tuple[str, Objective]:
    """("pgd", "ce") for "pgd", ("pgd", "margin") for "pgd+margin"; AttackError naming the
    unknown attack or loss and listing the known ones."""
    base, _, loss = name.partition("+")
    if base not in REGISTRY:
        raise AttackError(f"unknown attack {base!r}; registered: {', '.join(sorted(REGISTRY))}")
    if not loss:
        return base, "ce"
    if loss not in OBJECTIVES:
        raise AttackError(
            f"unknown loss {loss!r} in attack {name!r}; known: {', '.join(OBJECTIVES)} "
            f"(write e.g. {base}{MARGIN}; cross-entropy is the default)"
        )
    return base, "margin" if loss == "margin" else "ce"


def check_attack_names(names: tuple[str, ...] | list[str]) -> None:
    """Raise AttackError naming the first unknown attack (or loss) and listing the known ones."""
    for name in names:
        parse_attack_name(name)


def build_attack(name: str, eps: float, cfg: AttackConfig) -> Attack:
    """The registered attack called `name` (with `+margin`: on the margin loss) at budget
    `eps`, with the config's settings (validated where the config is parsed)."""
    base, objective = parse_attack_name(name)
    attack = REGISTRY[base](eps, cfg, objective)
    return dataclasses.replace(attack, name=name) if name != base else attack  # type: ignore[type-var]
