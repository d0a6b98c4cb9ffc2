"""The Flower run config, derived from the experiment YAML (never edited in parallel).

Flower run configs hold scalars only, so the settings one run needs are flattened to
dashed keys here and parsed back, with their types, at the ServerApp/ClientApp entry.

The keys are generated from RunSettings' fields: a field travels under its name with
dashes; a nested section (federation, training and theirs) field by field under a prefix,
its name and a dash unless PREFIX says otherwise; RENAMED keeps the names Flower users
know. Each value is parsed by the config's one coercer (shared.config.typed.coerce) and
each section rebuilt through its own checks.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shared.config.experiment import ExperimentConfig, FederationConfig
from shared.config.training import TrainingConfig
from shared.config.typed import coerce
from shared.errors import ConfigError

Scalar = str | int | float | bool
SOURCE = "run config"
PREFIX = {"federation": "", "training": "", "optimizer": "", "adversarial": "adv-"}
RENAMED = {
    "federation.rounds": "num-rounds",
    "federation.round_timeout_s": "round-timeout",
    "training.optimizer.name": "optimizer",
}


@dataclass(frozen=True)
class RunSettings:
    """Everything one Flower run (one architecture) needs, typed: the experiment's federation
    section, its training section as this architecture trains (shared.config.training's
    TrainingConfig.for_arch), the data facts a site needs, and what the submission adds."""

    arch: str
    sites: tuple[str, ...]
    image_size: int
    channels: int
    workers: int
    skip_unreadable: bool
    seed: int
    store: Path
    resume: bool
    study: str  # one id per submission: the first of its runs to start resets the store
    split: str  # the split's fingerprint, "manifest=sha256,...", or "" when unknown
    pretrained: str  # training.pretrained[arch]; "": no local weights file
    net_size: int  # training.per_arch.<arch>.net_size; 0: the architecture's default
    federation: FederationConfig
    training: TrainingConfig
    # feddf, one run for the whole federation (empty otherwise): each site's architecture
    # as "site=arch"; each architecture's own settings (JSON: net size, weights file, its
    # per_arch training exceptions; for_arch); the public split's manifests and the cache
    # folder the ServerApp reads them through (it distils on their images)
    site_archs: tuple[str, ...] = ()
    arch_settings: str = ""
    public: tuple[str, ...] = ()
    cache: str = ""

    @property
    def assignment(self) -> dict[str, str]:
        """feddf: site -> the architecture it trains (empty for one architecture's run)."""
        return dict(p.split("=", 1) for p in self.site_archs)

    def for_arch(self, arch: str) -> RunSettings:
        """feddf: these settings as `arch` trains with them (run_settings_for's for `arch`,
        the federation's fields kept)."""
        try:
            own = json.loads(self.arch_settings)[arch]
            t = self.training
            training = replace(
                t,
                local_epochs=int(own["local_epochs"]),
                finetune_epochs=int(own["finetune_epochs"]),
                optimizer=replace(t.optimizer, lr=float(own["lr"])),
                finetune_lr=float(own["finetune_lr"]),
            )
            return replace(
                self,
                arch=arch,
                net_size=int(own["net_size"]),
                pretrained=str(own["pretrained"]),
                training=training,
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ConfigError(f"{SOURCE}: key 'arch-settings' holds no settings for {arch!r}") from None

    def for_site(self, site: str) -> RunSettings:
        """feddf: the settings of the architecture `site` trains."""
        arch = self.assignment.get(site)
        if arch is None:
            raise ConfigError(
                f"{SOURCE}: site {site!r} has no architecture in key 'site-archs' "
                f"({','.join(self.site_archs)}); add it to federation.site_architectures"
            )
        return self.for_arch(arch)

    @property
    def training_record(self) -> dict[str, str]:
        """How this run trains its models, as the store records it per model."""
        a, fed = self.training.adversarial, self.federation
        adv = (
            f"{a.attack} eps {a.eps:g} steps {a.steps} step {a.step_fraction:g}*eps share {a.share:g} "
            f"from round {a.start_round}"
            if a
            else ""
        )
        parameter = {
            "fedprox": f" mu {fed.proximal_mu:g}",
            "fedtrimmedavg": f" beta {fed.trim_beta:g}",
            "krum": f" f {fed.malicious_sites}",
            "feddf": f" steps {fed.distill_steps} lr {fed.distill_lr:g} T {fed.distill_temperature:g}",
        }.get(fed.strategy, "")
        return {
            "strategy": fed.strategy + parameter,
            "adversarial": adv,
            "calibration": self.training.calibration,
        }

    @property
    def split_digests(self) -> dict[str, str]:
        """The split's fingerprint as manifest name -> digest (empty when unknown)."""
        return dict(p.split("=", 1) for p in self.split.split(",") if "=" in p)

    def to_run_config(self) -> dict[str, Scalar]:
        """The flat run config `flwr run --run-config` passes (and the store records)."""
        return _flatten(self, "", "")

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> RunSettings:
        """Parse Flower's run config; a missing or mistyped key is a ConfigError naming it."""
        if rc.get("store") == "":
            raise ConfigError("run config: 'store' is empty; pass --run-config \"store='/abs/dir'\"")
        settings: RunSettings = _build(cls, rc, "", "")
        return settings


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
    pretrained = cfg.training.pretrained.get(arch)
    run = RunSettings(
        arch=arch,
        sites=cfg.data.sites,
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        workers=cfg.data.workers,
        skip_unreadable=cfg.data.skip_unreadable,
        seed=cfg.seed,
        store=store.absolute(),
        resume=resume,
        study=study,
        split=",".join(f"{k}={v}" for k, v in sorted((split or {}).items())),
        pretrained=str(pretrained) if pretrained else "",
        net_size=cfg.training.net_size(arch),
        federation=cfg.federation,
        training=cfg.training.for_arch(arch),
    )
    return _with_feddf(cfg, run) if cfg.federation.strategy == "feddf" else run


def _with_feddf(cfg: ExperimentConfig, run: RunSettings) -> RunSettings:
    """The feddf run: `run` plus every site's architecture, every architecture's settings
    and the public split the ServerApp distils on."""
    own = {}
    for arch in cfg.federation.architectures:
        t, weights = cfg.training.for_arch(arch), cfg.training.pretrained.get(arch)
        own[arch] = {
            "net_size": cfg.training.net_size(arch),
            "pretrained": str(weights) if weights else "",
            "local_epochs": t.local_epochs,
            "finetune_epochs": t.finetune_epochs,
            "lr": t.optimizer.lr,
            "finetune_lr": t.finetune_rate,
        }
    return replace(
        run,
        federation=replace(cfg.federation, site_architectures={}),  # carried by site_archs
        site_archs=tuple(f"{s}={cfg.federation.site_architectures[s]}" for s in cfg.data.sites),
        arch_settings=json.dumps(own, sort_keys=True, separators=(",", ":")),
        # shared.data.manifest.public_manifest_path's names (shared.config may not import it)
        public=tuple(str((cfg.splits_dir / f"public_{d}.json").absolute()) for d in cfg.data.datasets),
        cache=str(cfg.cache_dir.absolute()),
    )


def _fields(cls: type, prefix: str, dotted: str) -> list[tuple[str, str, Any, type | None]]:
    """(name, key, type, nested dataclass or None) of each field of `cls` that travels.
    Mappings stay home: run_settings_for folds training.per_arch and training.pretrained
    into the run's own fields."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], dotted + f.name
        if typing.get_origin(tp) is dict:
            continue
        dashed, inner = f.name.replace("_", "-"), _section(tp)
        key = PREFIX.get(f.name, dashed + "-") if inner else RENAMED.get(path, dashed)
        out.append((f.name, prefix + key, tp, inner))
    return out


def _section(tp: Any) -> type | None:
    """The dataclass `tp` holds (X or X | None), None for a scalar."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _flatten(obj: Any, prefix: str, dotted: str) -> dict[str, Scalar]:
    """`obj`'s fields as run-config keys; a section that is None travels as its defaults with
    its first key empty (training.adversarial None: adv-attack "")."""
    out: dict[str, Scalar] = {}
    for name, key, _, inner in _fields(type(obj), prefix, dotted):
        value = getattr(obj, name)
        if inner:
            flat = _flatten(value if value is not None else inner(), key, f"{dotted}{name}.")
            if value is None:
                flat[next(iter(flat))] = ""
        else:
            flat = {key: _scalar(value, f"{dotted}{name}")}
        clash = set(out) & set(flat)
        if clash:
            raise ValueError(f"run config: {dotted}{name} repeats the key {sorted(clash)[0]!r}")
        out |= flat
    return out


def _scalar(value: Any, dotted: str) -> Scalar:
    if isinstance(value, tuple):
        if any("," in str(v) for v in value):
            raise ConfigError(f"run config: {dotted} {value!r}: an element holds a comma")
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, Scalar):
        raise ConfigError(f"run config: {dotted} is {value!r}; a Flower run config holds scalars only")
    return value


def _build(cls: type, rc: dict[str, Any], prefix: str, dotted: str) -> Any:
    """An instance of `cls` from the flat keys under `prefix`, each value checked by type,
    the instance by its own checks."""
    kwargs: dict[str, Any] = {}
    fields = _fields(cls, prefix, dotted)
    for name, key, tp, inner in fields:
        first = _fields(inner, key, f"{dotted}{name}.")[0][1] if inner else ""
        if inner and type(None) in typing.get_args(tp) and rc.get(first) == "":
            kwargs[name] = None
        elif inner:
            kwargs[name] = _build(inner, rc, key, f"{dotted}{name}.")
        else:
            kwargs[name] = _value(tp, rc, key)
    try:
        return cls(**kwargs)
    except ValueError as e:  # "field: what is wrong" names the key instead
        field, _, problem = str(e).partition(": ")
        named = next((k for n, k, _, inner in fields if n == field and not inner), None)
        raise ConfigError(f"{SOURCE}: " + (f"key {named!r}: {problem}" if named else str(e))) from None


def _value(tp: Any, rc: dict[str, Any], key: str) -> Any:
    if key not in rc:
        raise ConfigError(f"{SOURCE}: missing key {key!r}; is pyproject.toml current?")
    value = rc[key]
    if typing.get_origin(tp) is tuple:  # comma-joined
        value = [v for v in coerce(str, value, key, SOURCE).split(",") if v]
    return coerce(tp, value, key, SOURCE)
