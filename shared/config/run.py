"""The Flower run config, derived from the experiment YAML (never edited in parallel).

Flower run configs hold scalars only, so the settings one run needs are flattened to
dashed keys here and parsed back, with their types, at the ServerApp/ClientApp entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from shared.config.experiment import AdversarialTraining, ArchTraining, ExperimentConfig, OptimizerConfig
from shared.errors import ConfigError

Scalar = str | int | float | bool
T = TypeVar("T")


@dataclass(frozen=True)
class RunSettings:
    """Everything one Flower run (one architecture) needs, typed."""

    arch: str
    architectures: tuple[str, ...]
    sites: tuple[str, ...]
    num_rounds: int
    local_epochs: int
    finetune_epochs: int
    batch_size: int
    optimizer: OptimizerConfig
    finetune_lr: float
    image_size: int
    channels: int
    seed: int
    min_sites: int
    round_timeout: float
    store: Path
    resume: bool
    pretrained: str
    threads: int
    workers: int
    skip_unreadable: bool
    batchnorm: str  # recalibrate | restart (training.batchnorm)
    class_balance: bool
    study: str  # one id per submission: the first of its runs to start resets the store
    split: str  # the split's fingerprint, "manifest=sha256,...", or "" when unknown
    strategy: str = "fedavg"  # fedavg | fedprox | fedbn (federation.strategy)
    proximal_mu: float = 0.0
    adversarial: AdversarialTraining | None = None  # training.adversarial; None: clean
    calibration: str = "none"  # none | youden (training.calibration)
    net_size: int = 0  # training.per_arch.<arch>.net_size; 0: the architecture's default

    @property
    def training_record(self) -> dict[str, str]:
        """How this run trains its models, as the store records it per model."""
        a = self.adversarial
        adv = (
            f"{a.attack} eps {a.eps:g} steps {a.steps} step {a.step_fraction:g}*eps share {a.share:g} "
            f"from round {a.start_round}"
            if a
            else ""
        )
        mu = f" mu {self.proximal_mu:g}" if self.strategy == "fedprox" else ""
        return {"strategy": self.strategy + mu, "adversarial": adv, "calibration": self.calibration}

    @property
    def split_digests(self) -> dict[str, str]:
        """The split's fingerprint as manifest name -> digest (empty when unknown)."""
        return dict(p.split("=", 1) for p in self.split.split(",") if "=" in p)

    def to_run_config(self) -> dict[str, Scalar]:
        return {
            "arch": self.arch,
            "architectures": ",".join(self.architectures),
            "sites": ",".join(self.sites),
            "num-rounds": self.num_rounds,
            "local-epochs": self.local_epochs,
            "finetune-epochs": self.finetune_epochs,
            "batch-size": self.batch_size,
            "optimizer": self.optimizer.name,
            "lr": self.optimizer.lr,
            "finetune-lr": self.finetune_lr,
            "weight-decay": self.optimizer.weight_decay,
            "momentum": self.optimizer.momentum,
            "image-size": self.image_size,
            "channels": self.channels,
            "seed": self.seed,
            "min-sites": self.min_sites,
            "round-timeout": self.round_timeout,
            "store": str(self.store),
            "resume": self.resume,
            "pretrained": self.pretrained,
            "threads": self.threads,
            "workers": self.workers,
            "skip-unreadable": self.skip_unreadable,
            "batchnorm": self.batchnorm,
            "class-balance": self.class_balance,
            "study": self.study,
            "split": self.split,
            "strategy": self.strategy,
            "proximal-mu": self.proximal_mu,
            "calibration": self.calibration,
            "net-size": self.net_size,
            **adversarial_keys(self.adversarial),
        }

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> RunSettings:
        """Parse Flower's run config; a missing or mistyped key is a ConfigError naming it."""

        def get(key: str, tp: type) -> Any:
            if key not in rc:
                raise ConfigError(f"run config: missing key {key!r}; is pyproject.toml current?")
            value = rc[key]
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
                raise ConfigError(f"run config: key {key!r} must be {tp.__name__}, got {value!r}")
            return value

        store = get("store", str)
        if not store:
            raise ConfigError("run config: 'store' is empty; pass --run-config \"store='/abs/dir'\"")
        for key, choices in CHOICES.items():
            if get(key, str) not in choices:
                raise ConfigError(f"run config: {key!r} must be one of {', '.join(choices)}, got {rc[key]!r}")
        opt = get("optimizer", str)
        return cls(
            arch=get("arch", str),
            architectures=tuple(a for a in get("architectures", str).split(",") if a),
            sites=tuple(s for s in get("sites", str).split(",") if s),
            num_rounds=get("num-rounds", int),
            local_epochs=get("local-epochs", int),
            finetune_epochs=get("finetune-epochs", int),
            batch_size=get("batch-size", int),
            optimizer=OptimizerConfig(
                opt, get("lr", float), get("weight-decay", float), get("momentum", float)
            ),
            finetune_lr=get("finetune-lr", float),
            image_size=get("image-size", int),
            channels=get("channels", int),
            seed=get("seed", int),
            min_sites=get("min-sites", int),
            round_timeout=get("round-timeout", float),
            store=Path(store),
            resume=get("resume", bool),
            pretrained=get("pretrained", str),
            threads=get("threads", int),
            workers=get("workers", int),
            skip_unreadable=get("skip-unreadable", bool),
            batchnorm=get("batchnorm", str),
            class_balance=get("class-balance", bool),
            study=get("study", str),
            split=get("split", str),
            strategy=get("strategy", str),
            proximal_mu=get("proximal-mu", float),
            adversarial=_adversarial(get),
            calibration=get("calibration", str),
            net_size=get("net-size", int),
        )


def pick(value: T | None, default: T) -> T:
    return default if value is None else value


def run_settings_for(
    cfg: ExperimentConfig,
    arch: str,
    store: Path,
    resume: bool,
    study: str = "",
    split: dict[str, str] | None = None,
) -> RunSettings:
    """The run settings of `arch` from the experiment config."""
    if arch not in cfg.federation.architectures:
        raise ConfigError(f"architecture {arch!r} is not in federation.architectures")
    t = cfg.training
    pretrained = t.pretrained.get(arch)
    a = t.per_arch.get(arch, ArchTraining())
    return RunSettings(
        arch=arch,
        architectures=cfg.federation.architectures,
        sites=cfg.data.sites,
        num_rounds=cfg.federation.rounds,
        local_epochs=pick(a.local_epochs, t.local_epochs),
        finetune_epochs=pick(a.finetune_epochs, t.finetune_epochs),
        batch_size=t.batch_size,
        optimizer=replace(t.optimizer, lr=pick(a.lr, t.optimizer.lr)),
        finetune_lr=pick(a.finetune_lr, pick(t.finetune_lr, pick(a.lr, t.optimizer.lr))),
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        seed=cfg.seed,
        min_sites=cfg.federation.min_sites,
        round_timeout=cfg.federation.round_timeout_s,
        store=store.absolute(),
        resume=resume,
        pretrained=str(pretrained) if pretrained else "",
        threads=t.threads,
        workers=cfg.data.workers,
        skip_unreadable=cfg.data.skip_unreadable,
        batchnorm=t.batchnorm,
        class_balance=t.class_balance,
        study=study,
        split=",".join(f"{k}={v}" for k, v in sorted((split or {}).items())),
        strategy=cfg.federation.strategy,
        proximal_mu=cfg.federation.proximal_mu,
        adversarial=t.adversarial,
        calibration=t.calibration,
        net_size=t.net_size(arch),
    )


STRATEGIES = ("fedavg", "fedprox", "fedbn")
CHOICES = {  # run-config keys with a fixed set of values
    "optimizer": ("sgd", "adamw"),
    "strategy": STRATEGIES,
    "calibration": ("none", "youden"),
    "batchnorm": ("recalibrate", "restart"),
}


def adversarial_keys(adv: AdversarialTraining | None) -> dict[str, Scalar]:
    """training.adversarial as run-config keys; adv-attack "" means clean training."""
    a = adv or AdversarialTraining()
    return {
        "adv-attack": adv.attack if adv else "",
        "adv-eps": a.eps,
        "adv-steps": a.steps,
        "adv-step-fraction": a.step_fraction,
        "adv-share": a.share,
        "adv-start-round": a.start_round,
    }


def _adversarial(get: Callable[[str, type], Any]) -> AdversarialTraining | None:
    attack = get("adv-attack", str)
    if not attack:
        return None
    try:
        return AdversarialTraining(
            attack=attack,
            eps=get("adv-eps", float),
            steps=get("adv-steps", int),
            step_fraction=get("adv-step-fraction", float),
            share=get("adv-share", float),
            start_round=get("adv-start-round", int),
        )
    except ValueError as e:
        raise ConfigError(f"run config: {e}") from None
