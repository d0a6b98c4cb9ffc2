"""The Flower run config is derived from the experiment YAML and parsed back with types."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from deploy.flower.connection import format_run_config
from shared.config.experiment import load_config
from shared.config.run import RunSettings, run_settings_for
from shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_declares_exactly_the_derived_keys() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = load_config(REPO / "configs" / "demo.yaml")
    derived = run_settings_for(cfg, "resnet50", Path("/tmp/store"), False).to_run_config()
    assert set(declared) == set(derived)
    for k, v in derived.items():  # same TOML types, so `flwr run --run-config` accepts them
        assert type(declared[k]) is type(v), k


def test_roundtrip_and_bad_values() -> None:
    cfg = load_config(REPO / "configs" / "study.yaml")
    settings = run_settings_for(cfg, "densenet121", Path("/tmp/store"), True)
    rc = settings.to_run_config()
    assert RunSettings.from_run_config(rc) == settings
    assert "arch='densenet121'" in format_run_config(rc) and "resume=true" in format_run_config(rc)
    with pytest.raises(ConfigError, match="'lr'"):
        RunSettings.from_run_config({**rc, "lr": "fast"})
    with pytest.raises(ConfigError, match="missing key 'seed'"):
        RunSettings.from_run_config({k: v for k, v in rc.items() if k != "seed"})
    with pytest.raises(ConfigError, match="'store' is empty"):
        RunSettings.from_run_config({**rc, "store": ""})
    with pytest.raises(ConfigError, match=r"not in federation\.architectures"):
        run_settings_for(cfg, "vgg16", Path("/tmp/store"), False)
