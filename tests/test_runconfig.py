"""The Flower run config is derived from the experiment YAML and parsed back with types:
every setting of the federation and training sections travels, pyproject.toml declares
exactly the derived keys, and a bad key is an error that names it."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from deploy.flower.connection import format_run_config
from shared.config.experiment import FederationConfig, load_config
from shared.config.run import RunSettings, run_settings_for
from shared.config.training import TrainingConfig
from shared.errors import ConfigError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
STORE = Path("/tmp/store")
FEDDF = {
    "federation.strategy": "feddf",
    "federation.site_architectures": {
        "A": "resnet50",
        "B": "densenet121",
        "C": "inception_v3",
        "D": "resnet50",
    },
}
# Settings whose other values their checks accept only with another setting.
WITH = {
    "federation.distill_steps": FEDDF,
    "federation.distill_lr": FEDDF,
    "federation.distill_temperature": FEDDF,
    "federation.proximal_mu": {"federation.strategy": "fedprox"},
    "federation.trim_beta": {"federation.strategy": "fedtrimmedavg"},
    "federation.malicious_sites": {"federation.strategy": "krum"},
    "training.adversarial.steps": {"training.adversarial.attack": "pgd"},
}
OWN = {"data.image_size": 96, "data.channels": 3, "data.workers": 0, "data.skip_unreadable": True, "seed": 8}


def settings(cls: type, dotted: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, type, default) of every scalar setting under `cls`, sections recursed
    (an optional one too); mappings (folded per architecture) and tuples left out."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{dotted}.{f.name}"
        inner = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if typing.get_origin(tp) in (dict, tuple):
            continue
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            yield from settings(inner, key)
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield key, tp, default


def others(tp: Any, value: Any) -> list[Any]:
    """Values of type `tp` other than `value`, in the order to try them."""
    args = typing.get_args(tp)
    if type(None) in args:
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return [a for a in typing.get_args(tp) if a != value]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1, value - 1] if value is not None else [2]
    if tp is float:
        return [value / 2, value * 2, value * 1.5] if value else [0.5]
    return [f"{value}x"]


def at(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part) if obj is not None else None
    return obj


def travelled(overrides: dict[str, Any], arch: str = "resnet50") -> RunSettings:
    """The run settings of `arch`, sent through the run config and parsed back."""
    run = run_settings_for(load_config(DEMO, overrides), arch, STORE, False)
    back = RunSettings.from_run_config(run.to_run_config())
    assert back == run
    return back


SETTINGS = [*settings(FederationConfig, "federation"), *settings(TrainingConfig, "training")]


@pytest.mark.parametrize(("key", "tp", "default"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_every_setting_travels(key: str, tp: Any, default: Any) -> None:
    """Each setting of the federation and training sections, at a value other than the
    demo's, arrives at the apps as set: a new setting is covered without editing this test."""
    demo = at(load_config(DEMO), key)
    for value in others(tp, default if demo is None else demo):
        try:
            back = travelled({key: value, **WITH.get(key, {})})
        except ConfigError:
            continue  # a value its checks refuse: try the next one
        assert at(back, key) == value
        return
    pytest.fail(f"no other value of {key} passes its checks; name the settings it needs in WITH")


def test_the_runs_own_settings_and_per_arch_exceptions_travel() -> None:
    back = travelled(OWN)
    assert [at(back, k.split(".")[-1]) for k in OWN] == list(OWN.values())
    per_arch = {"lr": 0.01, "local_epochs": 3, "finetune_epochs": 2, "finetune_lr": 0.002, "net_size": 96}
    back = travelled(
        {"training.per_arch": {"resnet50": per_arch}, "training.pretrained": {"resnet50": "/w.pt"}}
    )
    t = back.training
    assert (t.optimizer.lr, t.local_epochs, t.finetune_epochs, t.finetune_rate) == (0.01, 3, 2, 0.002)
    assert (back.net_size, back.pretrained) == (96, "/w.pt")
    other = travelled({"training.per_arch": {"resnet50": per_arch}}, arch="densenet121")
    assert (other.training.optimizer.lr, other.net_size, other.training.finetune_rate) == (0.001, 0, 0.0001)


def test_pyproject_declares_the_derived_run_config() -> None:
    """Flower refuses an override key the app does not declare, so pyproject.toml lists
    every key, with the demo config's values for its first architecture (store empty)."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = load_config(DEMO)
    derived = run_settings_for(cfg, cfg.federation.architectures[0], STORE, False).to_run_config()
    derived["store"] = ""
    wrong = {k: v for k, v in derived.items() if k not in declared or type(declared[k]) is not type(v)}
    wrong |= {k: v for k, v in derived.items() if declared.get(k) != v}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in wrong.items())
    assert not wrong, f"pyproject.toml [tool.flwr.app.config] should read:\n{lines}"
    assert not set(declared) - set(derived), f"keys no setting has: {sorted(set(declared) - set(derived))}"


def test_roundtrip_and_bad_values() -> None:
    cfg = load_config(REPO / "configs" / "study.yaml")
    settings = run_settings_for(cfg, "densenet121", STORE, True)
    rc = settings.to_run_config()
    assert RunSettings.from_run_config(rc) == settings
    assert "arch='densenet121'" in format_run_config(rc) and "resume=true" in format_run_config(rc)
    bad = [
        ({"lr": "fast"}, "key 'lr' must be a number"),
        ({"strategy": "fedsgd"}, r"key 'strategy' must be one of \['fedavg', 'fedprox', 'fedbn', 'fedmed"),
        ({"calibration": "platt"}, "key 'calibration' must be one of"),
        ({"optimizer": "adam"}, "key 'optimizer' must be one of"),
        ({"batchnorm": 1}, "key 'batchnorm' must be one of"),
        ({"resume": 1}, "key 'resume' must be true or false"),
        ({"architectures": 3}, "key 'architectures' must be a string"),
        ({"batch-size": 1}, r"run config: key 'batch-size': must be at least 2"),
        ({"adv-attack": "fgsm", "adv-steps": 3}, "run config: key 'adv-steps': fgsm takes one step"),
        ({"strategy": "fedprox"}, "run config: key 'proximal-mu': fedprox needs a weight > 0"),
        ({"store": ""}, "'store' is empty; pass --run-config \"store='/abs/dir'\""),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            RunSettings.from_run_config({**rc, **change})
    with pytest.raises(ConfigError, match=r"missing key 'seed'; is pyproject\.toml current"):
        RunSettings.from_run_config({k: v for k, v in rc.items() if k != "seed"})
    with pytest.raises(ConfigError, match=r"not in federation\.architectures"):
        run_settings_for(cfg, "vgg16", STORE, False)
