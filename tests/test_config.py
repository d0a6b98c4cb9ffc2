import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.study import variant_configs
from shared.config.experiment import ExperimentConfig, load_config
from shared.errors import ConfigError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.data.sites == ("A", "B", "C", "D")
    assert cfg.attack.eps == 0.02
    if cfg.study is not None:  # every variant's config loads too (its overrides applied)
        assert list(variant_configs(path, None)[1]) == [v.name for v in cfg.study.variants]


def test_study_config_has_the_study_settings() -> None:
    cfg = load_config(REPO / "configs" / "study.yaml")
    assert cfg.federation.architectures == ("resnet50", "densenet121", "inception_v3")
    assert cfg.federation.rounds == 3
    assert cfg.data.image_size >= 224


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    mutate(raw)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r["training"].update(bach_size=4), "'training.bach_size'"),
        (lambda r: r["data"].pop("image_size"), "'data.image_size'"),
        (lambda r: r["data"].update(image_size="big"), "'data.image_size' must be an integer"),
        (lambda r: r["training"]["optimizer"].update(name="rmsprop"), "'training.optimizer.name'"),
        (lambda r: r["attack"].update(eps=1.5), "eps"),
        (lambda r: r["data"]["datasets"]["nih"].update(sites=["A", "A"]), "site A is named twice"),
        (lambda r: r["data"]["datasets"]["nih"].update(sites=["A", "x/y"]), "site name 'x/y' must be"),
        (
            lambda r: r["data"]["datasets"]["nih"].update(partition={"kind": "label", "alpha": 0}),
            "data.datasets.nih.partition.alpha: must be > 0",
        ),
        (lambda r: r["data"]["datasets"]["rsna"].update(sites=["B", "C"]), "already belongs"),
        (lambda r: r["federation"].update(architectures="resnet50"), "must be a list"),
        (lambda r: r["data"].update(skip_unreadable=1), "true or false"),
        (
            lambda r: r["federation"].update(architectures=["resnet50", "densenet12"]),
            "federation.architectures: 'densenet12' is not a timm model name; close names: densenet121",
        ),
        (lambda r: r["training"].update(per_arch={"inceptionv3": {}}), "training.per_arch: 'inceptionv3'"),
        (
            lambda r: r["training"].update(per_arch={"inception_v3": {"net_size": 60}}),
            "training.per_arch.inception_v3.net_size: 60 is below the smallest input inception_v3 accepts",
        ),
        (
            lambda r: r["training"].update(per_arch={"resnet50": {"net_size": 0}}),
            "net_size: must be a positive",
        ),
    ],
)
def test_bad_keys_are_errors_naming_key_and_file(tmp_path: Path, mutate, needle: str) -> None:
    p = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_and_dump_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", {"data.image_size": 96, "seed": 1})
    assert cfg.data.image_size == 96 and cfg.seed == 1
    out = tmp_path / "resolved.yaml"
    cfg.dump(out)
    again = load_config(out)
    assert again == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)  # "billion laughs": nine lines that expand to 10**9 strings


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """An alias anywhere (the bomb under `name:`, or in a study variant's overrides) is
    refused by the parser before anything expands: the error names the file and the alias."""
    demo = (REPO / "configs" / "demo.yaml").read_text()
    for where, text in {
        "name": BOMB + demo.replace("name:", "ignored_name:", 1) + "\nname: *i\n",
        "overrides": demo + "\n" + BOMB + "study:\n  variants:\n    - name: x\n      overrides: *i\n",
    }.items():
        path = tmp_path / f"{where}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(path)
        message = str(e.value)
        assert str(path) in message and "aliases (*" in message and len(message) < 400, message


def test_an_anchor_without_alias_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text((REPO / "configs" / "demo.yaml").read_text().replace("name:", "name: &n", 1))
    assert load_config(path).name


def test_a_long_bad_value_is_shown_as_a_bounded_excerpt(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r.update(seed=["x" * 10_000] * 100))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "'seed'" in message and "characters)" in message and len(message) < 400, message
