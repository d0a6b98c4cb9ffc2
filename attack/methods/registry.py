"""The attack registry. Attacks take and return [0, 1] image tensors (normalization lives
inside the models), with eps an L-infinity budget in that pixel space. Each attack holds
only its maths; the measurement (attack.measure.core) owns batching, devices and the split of
the attack images, and works with any attack through the `Attack` protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from attack.methods.iterative import Iterative
from attack.methods.surrogate import Surrogate
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
    name: ClassVar[str] = "fgsm"
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
        g = surrogate.input_gradient(x, y) if grad is None else grad
        return g.sign().to(torch.int8)

    def apply(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + self.eps * code.to(x.dtype), 0.0, 1.0)


Factory = Callable[[float, AttackConfig], Attack]


def _iterative(
    name: str, random_start: bool = False, momentum: bool = False, diverse: bool = False
) -> Factory:
    def make(eps: float, cfg: AttackConfig) -> Attack:
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
        )

    return make


def _universal(name: str, targeted: bool) -> Factory:
    def make(eps: float, cfg: AttackConfig) -> Attack:
        u = cfg.universal
        return Universal(
            name=name,
            eps=eps,
            targeted=targeted,
            epochs=u.epochs,
            batch_size=u.batch_size,
            step_size=eps * u.step_fraction,
            optimizer=u.optimizer,
        )

    return make


REGISTRY: dict[str, Factory] = {
    "fgsm": lambda eps, cfg: FGSM(eps),
    "bim": _iterative("bim"),  # I-FGSM (Kurakin et al., 2017)
    "pgd": _iterative("pgd", random_start=True),  # Madry et al., 2018
    "mifgsm": _iterative("mifgsm", momentum=True),  # Dong et al., 2018
    "difgsm": _iterative("difgsm", diverse=True),  # Xie et al., 2019
    "midi": _iterative("midi", momentum=True, diverse=True),
    "uap": _universal("uap", targeted=False),  # SGD-UAP (Shafahi et al., 2020)
    "uap-targeted": _universal("uap-targeted", targeted=True),  # towards "no pneumonia"
}


def check_attack_names(names: tuple[str, ...] | list[str]) -> None:
    """Raise AttackError naming the first unknown attack and listing the registered ones."""
    for name in names:
        if name not in REGISTRY:
            raise AttackError(f"unknown attack {name!r}; registered: {', '.join(sorted(REGISTRY))}")


def build_attack(name: str, eps: float, cfg: AttackConfig) -> Attack:
    """The registered attack called `name` at budget `eps`, with the config's settings
    (validated where the config is parsed)."""
    check_attack_names([name])
    return REGISTRY[name](eps, cfg)
