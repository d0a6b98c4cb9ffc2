"""The experiment config: one YAML file, parsed once into typed, frozen dataclasses.

Unknown, missing and mistyped keys are errors that name the dotted key and the file.
Relative paths in the YAML are resolved against the current working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from shared.config.attack import DEVICE, AttackConfig
from shared.config.data import SITE_NAME, DataConfig
from shared.config.study import StudyConfig
from shared.config.training import TrainingConfig, patch_problem
from shared.config.typed import build, load_yaml, plain, set_dotted
from shared.errors import ConfigError
from shared.io import atomic_write

TRIM_BETA = 0.25  # fedtrimmedavg's default cut: one reply off each end of four
# feddf's distillation defaults: Adam at temperature 1 as Lin et al. (2020), at a tenth of
# their 1e-3: the student learns with its BatchNorm statistics fixed (shared.ml.distill), and
# at 1e-3 MobileNetV3's loss rose on the tiny twin in one round of two where 1e-4 lowered it
DISTILL_STEPS, DISTILL_LR, DISTILL_TEMPERATURE = 100, 1e-4, 1.0


def check_arch_names(names: tuple[str, ...], key: str) -> None:
    """Every name must be a timm model name: a typo fails at config load, not in a site."""
    import timm  # only here: a second to import, and the config's users all need it soon

    for name in names:
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            close = close or timm.list_models(f"*{name[:5]}*")[:5]
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise ValueError(f"{key}: {name!r} is not a timm model name{hint}")


@dataclass(frozen=True)
class FederationConfig:
    """FedAvg settings. One Flower run per architecture."""

    architectures: tuple[str, ...]
    rounds: int = 3
    min_sites: int = 4
    round_timeout_s: float = 3600.0
    # The architectures' Flower runs run at once on one SuperLink: Flower's fixed cost per
    # message (a ClientApp process start, weight transfers, polling) then overlaps.
    concurrent_runs: bool = True
    # fedavg; fedprox (Flower's FedProx, the proximal term in each site's loss); fedbn
    # (BatchNorm parameters and statistics stay at each site, everything else is averaged);
    # the robust aggregators, Flower's own: fedmedian (coordinate-wise median),
    # fedtrimmedavg (coordinate-wise mean after cutting trim_beta of the replies off each
    # end), krum (the one reply closest to its n - malicious_sites - 2 nearest); feddf
    # (FedDF, Lin et al., 2020): sites train the architectures site_architectures assigns
    # them, FedAvg within each architecture, then each architecture's average is distilled
    # on the unlabeled public split towards the averaged logits of every site's model
    # (server.feddf); one Flower run for the whole federation.
    strategy: Literal["fedavg", "fedprox", "fedbn", "fedmedian", "fedtrimmedavg", "krum", "feddf"] = "fedavg"
    proximal_mu: float = 0.0  # fedprox: weight of (mu / 2) * ||w - w_global||^2
    trim_beta: float = TRIM_BETA  # fedtrimmedavg: share of the replies cut off each end
    malicious_sites: int = 0  # krum: f, the sites its score allows to be malicious
    # Every reply whose update (its weights minus the global sent) has an L2 norm above
    # this multiple of the round's median update norm is rejected (server.validation).
    update_norm_multiple: float = 10.0
    # `fedattack federate`'s placement: site -> "cpu", "cuda:N"; a site not listed gets the
    # visible GPUs round-robin (A cuda:0, B cuda:1, ...), the CPU on a host without one.
    site_devices: dict[str, str] = field(default_factory=dict)
    # feddf: site -> the architecture it trains (one of `architectures`; every site listed)
    site_architectures: dict[str, str] = field(default_factory=dict)
    distill_steps: int = DISTILL_STEPS  # feddf: Adam steps per architecture and round
    distill_lr: float = DISTILL_LR  # feddf: the distillation's Adam learning rate
    distill_temperature: float = DISTILL_TEMPERATURE  # feddf: softmax temperature of the KL loss
    # The pooled baseline (`fedattack federate`, demo and study only): after the federation,
    # one model per architecture trained centrally on the union of the sites' train splits
    # (rounds x local_epochs epochs), stored as <arch>-pooled, kind "pooled" (shared.pooled).
    pooled_baseline: bool = False

    def __post_init__(self) -> None:
        for site, device in self.site_devices.items():
            if not SITE_NAME.fullmatch(site) or not DEVICE.fullmatch(device):
                raise ValueError(f"site_devices: {site}: {device!r} must map a site to 'cpu' or 'cuda:N'")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ValueError(f"proximal_mu: fedprox needs a weight > 0, got {self.proximal_mu}")
        if self.strategy != "fedprox" and self.proximal_mu != 0:
            raise ValueError(f"proximal_mu: only fedprox uses it (strategy is {self.strategy})")
        self._check_robust()
        self._check_feddf()
        if not self.architectures:
            raise ValueError("architectures: give at least one timm model name")
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError("architectures: names must be unique")
        if self.rounds < 1:
            raise ValueError("rounds: must be >= 1")
        if self.min_sites < 1:  # its upper bound, the configured sites, is ExperimentConfig's check
            raise ValueError(f"min_sites: must be >= 1, got {self.min_sites}")
        if not self.update_norm_multiple >= 1:
            raise ValueError(
                f"update_norm_multiple: must be >= 1 (a multiple of the round's median update norm), "
                f"got {self.update_norm_multiple}"
            )

    def _check_feddf(self) -> None:
        """feddf's assignment (sites over two or more of `architectures`) and its settings,
        used by feddf only; that it names every site (data.sites) is ExperimentConfig's check."""
        used_by_feddf = {
            "site_architectures": (self.site_architectures, {}),
            "distill_steps": (self.distill_steps, DISTILL_STEPS),
            "distill_lr": (self.distill_lr, DISTILL_LR),
            "distill_temperature": (self.distill_temperature, DISTILL_TEMPERATURE),
        }
        if self.strategy != "feddf":
            for name, (value, default) in used_by_feddf.items():
                if value != default:
                    raise ValueError(f"{name}: only feddf uses it (strategy is {self.strategy})")
            return
        if self.distill_steps < 1 or not self.distill_lr > 0 or not self.distill_temperature > 0:
            raise ValueError(
                "distill_steps, distill_lr, distill_temperature: must be >= 1, > 0 and > 0, got "
                f"{self.distill_steps}, {self.distill_lr}, {self.distill_temperature}"
            )
        if not self.site_architectures:  # a run's copy: RunSettings.site_archs carries it
            return
        for site, arch in self.site_architectures.items():
            if not SITE_NAME.fullmatch(site) or arch not in self.architectures:
                raise ValueError(
                    f"site_architectures: {site[:40]}: {str(arch)[:60]!r} must be one of "
                    f"federation.architectures {list(self.architectures)}"
                )
        used = set(self.site_architectures.values())
        if len(used) < 2:
            raise ValueError(
                f"site_architectures: feddf distils between architectures, but every site trains "
                f"{', '.join(sorted(used))}; assign at least two (or use strategy fedavg)"
            )
        unused = [a for a in self.architectures if a not in used]
        if unused:
            raise ValueError(
                f"architectures: {', '.join(unused)} is trained by no site in site_architectures; "
                "assign it to a site or remove it"
            )

    def _check_robust(self) -> None:
        """The robust strategies' parameters: used by their strategy only, and able to do
        something with the fewest replies a round aggregates (min_sites)."""
        n, f, beta = self.min_sites, self.malicious_sites, self.trim_beta
        if self.strategy != "fedtrimmedavg" and beta != TRIM_BETA:
            raise ValueError(f"trim_beta: only fedtrimmedavg uses it (strategy is {self.strategy})")
        if self.strategy != "krum" and f != 0:
            raise ValueError(f"malicious_sites: only krum uses it (strategy is {self.strategy})")
        if self.strategy == "fedtrimmedavg" and n < 3:
            raise ValueError(f"min_sites: fedtrimmedavg cuts nothing off fewer than 3 replies, got {n}")
        if self.strategy == "fedtrimmedavg" and not (0 <= beta < 0.5 and int(beta * n) >= 1):
            raise ValueError(
                f"trim_beta: {beta} must be below 0.5 and cut at least one of the {n} replies of a round "
                f"(min_sites) off each end: use at least 1/{n}"
            )
        if f < 0 or (f > 0 and n - f - 2 < 1):
            raise ValueError(
                f"malicious_sites: Krum scores a reply by its n - f - 2 nearest others; with min_sites "
                f"{n}, f must be in 0..{max(0, n - 3)}, got {f}"
            )


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic twin that `fedattack demo` writes (under output_dir/data)."""

    patients: int = 400
    size: int = 256
    positive_rate: float = 0.35

    def __post_init__(self) -> None:
        if self.patients < 20:
            raise ValueError("patients: must be at least 20")
        if not 0.05 <= self.positive_rate <= 0.95:
            raise ValueError("positive_rate: must be in [0.05, 0.95]")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment. `output_dir` holds splits, caches, checkpoints and results."""

    name: str
    seed: int
    output_dir: Path
    data: DataConfig
    federation: FederationConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    study: StudyConfig | None = None  # `fedattack study`: variants to train and compare
    # the seed that splits the data (None: `seed`); `fedattack study --seeds` keeps it
    # fixed so that replicate federations, each with its own seed, share one split
    split_seed: int | None = None

    def __post_init__(self) -> None:
        # per_arch and pretrained may name architectures this run leaves out (a config
        # narrowed with an override keeps working); every name must be a timm model
        check_arch_names(self.federation.architectures, "federation.architectures")
        check_arch_names(tuple(self.training.per_arch), "training.per_arch")
        check_arch_names(tuple(self.training.pretrained), "training.pretrained")
        for arch in self.federation.architectures:  # a per_arch net_size was checked in training
            problem = patch_problem(arch, self.training.net_size(arch) or self.data.image_size)
            if problem and not self.training.net_size(arch):
                raise ValueError(
                    f"data.image_size: {problem} (set training.per_arch.{arch}.net_size to a size it divides)"
                )
        self._check_feddf_data()
        if len(self.data.sites) < self.federation.min_sites:
            raise ValueError(
                f"federation.min_sites: {self.federation.min_sites} exceeds the "
                f"{len(self.data.sites)} configured sites"
            )

    def _check_feddf_data(self) -> None:
        """feddf assigns exactly the configured sites, and distils on the public split."""
        fed = self.federation
        if fed.strategy != "feddf":
            return
        assigned, sites = set(fed.site_architectures), set(self.data.sites)
        if assigned != sites:
            unknown, missing = sorted(assigned - sites), sorted(sites - assigned)
            what = f"names no configured site: {', '.join(unknown)}" if unknown else ""
            what += ("; " if what else "") + (f"leaves out {', '.join(missing)}" if missing else "")
            raise ValueError(
                f"federation.site_architectures: {what} (data.sites: {', '.join(self.data.sites)}); "
                "give every site one architecture"
            )
        if self.data.split.public_fraction <= 0:
            raise ValueError(
                "data.split.public_fraction: feddf distils on the public split (patients no site holds); "
                "set it above 0, e.g. 0.1"
            )

    @property
    def splitting_seed(self) -> int:
        """The seed the data split is drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def splits_dir(self) -> Path:
        return self.output_dir / "splits"

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "cache"

    @property
    def store_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def attack_dir(self) -> Path:
        return self.output_dir / "attack"

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe dict of the resolved config."""
        return plain(dataclasses.asdict(self))

    def dump(self, path: Path) -> None:
        """Write the resolved config as YAML (saved next to checkpoints and results)."""
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate an experiment YAML. `overrides` maps dotted keys to new values."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the experiment YAML file in it") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a text file (byte {e.start} is not UTF-8); give the experiment YAML"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value, path)
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a config already parsed from YAML."""
    return build(ExperimentConfig, raw, "", source)
