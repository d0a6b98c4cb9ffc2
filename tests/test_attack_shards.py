"""The attack over several devices (`attack.devices`): the sources and targets sharded over
two or three shards of the CPU give the measurement of one device bit for bit (FGSM, with
its fused clean pass, and PGD, with its random start; member sources and the insider's
ensembles, whose members live on other shards); "auto" is every visible GPU, else the
CPU; a GPU that is not there is refused by key, before anything runs; the provenance
records the devices."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import pytest
import torch

from attack.measure.core import AttackSet, Measurement, Probe, Settings, Target
from attack.measure.shards import attack_devices, run_sharded
from attack.measure.threats import insider_sources, member_sources
from attack.measure.transfer import measure
from attack.methods.registry import build_attack
from attack.reports.provenance import provenance
from attack.service import settings_for
from shared.config.experiment import load_config
from shared.errors import AttackError, ConfigError
from shared.ml.models import build_model
from tests.cli_helpers import fedattack, refused
from tests.conftest import REPO, write_config

CPU = torch.device("cpu")
DEMO = REPO / "configs" / "demo.yaml"
ARCHS = {"resnet18": 1, "resnet10t": 2}  # architecture -> seed of its global model


@pytest.fixture(scope="module")
def federation() -> tuple[list[Target], AttackSet]:
    """A global and two local models of two small timm architectures (random weights, each
    head's bias set so that it calls about half of the images pneumonia), and 8 images."""
    torch.manual_seed(0)
    images = torch.rand(8, 1, 24, 24)
    targets = []
    for arch, seed in ARCHS.items():
        for kind, site in (("global", None), ("local", "A"), ("local", "B")):
            torch.manual_seed(seed + (0 if site is None else ord(site)))
            model = build_model(arch, image_size=24, channels=1).eval()
            with torch.no_grad():
                z = model(images)
                model.net.get_classifier().bias[1] -= float((z[:, 1] - z[:, 0]).median())
            targets.append(Target(f"{arch}-{kind}{site or ''}", arch, kind, site, model))
    return targets, AttackSet(images, tuple(f"nih/{i}" for i in range(len(images))))


def _measure(
    federation, attack: str, threat: str, devices: tuple[torch.device, ...]
) -> tuple[Measurement, Probe]:
    """The measurement on fresh copies of the models, sharded over `devices`."""
    targets, data = federation
    fresh = [Target(t.name, t.arch, t.kind, t.site, copy.deepcopy(t.model)) for t in targets]
    s = Settings(batch=4, device=devices[0], dtype=torch.float32, seed=5, fit_fraction=0.5, devices=devices)
    probe = Probe(fresh, data, s)
    sources = member_sources(fresh) if threat == "member" else insider_sources(fresh, "logits")
    cfg = load_config(DEMO, {"attack.iterative.steps": 2}).attack
    return measure(sources, build_attack(attack, 0.02, cfg), probe, s, progress=False), probe


@pytest.mark.unit
@pytest.mark.parametrize(
    ("attack", "threat", "shards"),
    [("fgsm", "member", 2), ("fgsm", "insider", 3), ("pgd", "member", 3), ("pgd", "insider", 2)],
)
def test_shards_of_the_cpu_give_the_counts_of_one_device_bit_for_bit(
    federation, attack: str, threat: str, shards: int
) -> None:
    one, _ = _measure(federation, attack, threat, (CPU,))
    assert any(c.n_misclassified_after for c in one.cells) and any(c.n_correct_before for c in one.cells)
    sharded, probe = _measure(federation, attack, threat, (CPU,) * shards)
    assert sorted(set(probe.shard.values())) == list(range(shards))  # the targets dealt out
    if threat == "insider":  # the ensembles craft on copies of the members that live elsewhere
        assert probe.copies
    # every cell, clean count, attacked image, code digest, perceptual figure and control,
    # in the same order (results.json lists them as the measurement holds them)
    assert sharded == one
    for field in ("attacked", "code_digest", "perceptual", "clean_correct", "fit"):
        assert list(getattr(sharded, field)) == list(getattr(one, field)), field


@pytest.mark.unit
def test_each_shard_runs_its_items_in_order_on_its_own_thread_and_the_results_keep_the_items_order() -> None:
    seen: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    out = run_sharded(
        list(range(7)),
        lambda i: i % 2,
        lambda i: seen[i % 2].append((i, threading.current_thread().name)) or i * i,
        (CPU, CPU),
    )
    assert out == [i * i for i in range(7)]
    assert [i for i, _ in seen[0]] == [0, 2, 4, 6] and [i for i, _ in seen[1]] == [1, 3, 5]
    (t0,), (t1,) = {t for _, t in seen[0]}, {t for _, t in seen[1]}
    assert t0 != t1 and threading.current_thread().name not in (t0, t1)


@pytest.mark.unit
def test_a_failing_shard_stops_the_others_and_its_error_is_raised() -> None:
    """Shard 0 fails while shard 1 is in its first item; shard 1 then stops before its next."""
    started, failed = threading.Event(), threading.Event()
    done: list[int] = []

    def work(i: int) -> int:
        if i == 0:
            started.wait(5)
            failed.set()
            raise ValueError("item 0 broke")
        started.set()
        failed.wait(5)
        time.sleep(0.2)  # shard 0 stops the others meanwhile
        done.append(i)
        return i

    with pytest.raises(ValueError, match="item 0 broke"):
        run_sharded([0, 1, 2, 3, 5, 7], lambda i: 0 if i == 0 else 1, work, (CPU, CPU))
    assert done == [1]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("gpus", "expected"), [(0, ["cpu"]), (1, ["cuda:0"]), (3, ["cuda:0", "cuda:1", "cuda:2"])]
)
def test_auto_is_every_visible_gpu_else_the_cpu(gpus: int, expected: list[str]) -> None:
    cfg = load_config(DEMO)
    assert cfg.attack.devices.auto
    assert [str(d) for d in attack_devices(cfg.attack, gpus)] == expected
    assert [str(d) for d in settings_for(cfg, gpus).shards] == expected


@pytest.mark.unit
def test_listed_devices_are_kept_in_order_and_one_name_is_a_list_of_one() -> None:
    cfg = load_config(DEMO, {"attack.devices": ["cuda:1", "cuda:0", "cpu"]})
    assert [str(d) for d in attack_devices(cfg.attack, 2)] == ["cuda:1", "cuda:0", "cpu"]
    assert [str(d) for d in attack_devices(load_config(DEMO, {"attack.devices": "cpu"}).attack, 4)] == ["cpu"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("gpus", "here"), [(2, "the GPUs present are cuda:0, cuda:1"), (0, "this host has no visible GPU")]
)
def test_a_gpu_that_is_not_there_is_refused_by_key(gpus: int, here: str) -> None:
    cfg = load_config(DEMO, {"attack.devices": ["cuda:0", "cuda:2"]})
    with pytest.raises(ConfigError) as e:
        attack_devices(cfg.attack, gpus)
    first = "attack.devices[1]: cuda:2" if gpus else "attack.devices[0]: cuda:0"
    assert (
        str(e.value) == f"{first} is not on this host ({here}); list only the devices present, or write auto"
    )


@pytest.mark.unit
@pytest.mark.parametrize("value", ["gpu1", ["cuda"], [], ["auto", "cpu"], 3])
def test_a_malformed_device_list_is_refused_at_config_load(value: object) -> None:
    with pytest.raises(ConfigError, match=r"attack\.devices.*'auto' or a list of 'cpu' / 'cuda:N'"):
        load_config(DEMO, {"attack.devices": value})


@pytest.mark.unit
def test_bfloat16_needs_every_device_to_be_a_gpu() -> None:
    cfg = load_config(DEMO, {"attack.devices": ["cuda:0", "cpu"], "attack.precision": "bfloat16"})
    with pytest.raises(AttackError, match="bfloat16 needs a CUDA device"):
        attack_devices(cfg.attack, 1)


@pytest.mark.unit
def test_the_provenance_records_every_device_and_the_config_round_trips(tmp_path: Path) -> None:
    s = Settings(4, CPU, torch.float32, 0, 0.5, devices=(CPU, CPU))
    p = provenance(s, "fp")
    assert p.to_json()["devices"] == ["cpu", "cpu"] and p.device == "cpu"
    cfg = load_config(DEMO, {"attack.devices": ["cuda:0", "cuda:1"]})
    cfg.dump(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").attack.devices == ("cuda:0", "cuda:1")
    load_config(DEMO).dump(tmp_path / "auto.yaml")
    assert load_config(tmp_path / "auto.yaml").attack.devices.auto


@pytest.mark.integration
def test_fedattack_attack_refuses_a_missing_gpu_before_any_work(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", tmp_path, tmp_path / "run", **{"attack.devices": ["cpu", "cuda:99"]}
    )
    out = tmp_path / "attack-out"
    res = fedattack("attack", "--config", str(cfg), "--out", str(out))
    refused(
        res, "attack.devices[1]: cuda:99 is not on this host", "list only the devices present, or write auto"
    )
    assert not out.exists() and not (tmp_path / "run").exists()
