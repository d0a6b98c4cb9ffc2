"""`fedattack federate` places one site per GPU: the visible GPUs round-robin in site order,
a per-site pin in the config, and a pin to a GPU that is not there refused before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local import node_configs, place_sites, record_placement
from shared.config.experiment import load_config
from shared.errors import ConfigError
from shared.events import read_events
from shared.store.folder import CheckpointStore
from tests.cli_helpers import fedattack, refused
from tests.conftest import write_config

SITES = ("A", "B", "C", "D")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (0, ["cpu"] * 4),
        (1, ["cuda:0"] * 4),
        (2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]),
        (3, ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]),
        (4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        (8, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
    ],
)
def test_four_sites_get_the_visible_gpus_round_robin(gpus: int, expected: list[str]) -> None:
    assert list(place_sites(SITES, {}, gpus).values()) == expected


@pytest.mark.unit
def test_a_pinned_site_keeps_its_device_and_the_others_stay_round_robin() -> None:
    placed = place_sites(SITES, {"B": "cpu", "D": "cuda:0"}, 2)
    assert placed == {"A": "cuda:0", "B": "cpu", "C": "cuda:0", "D": "cuda:0"}


@pytest.mark.unit
def test_node_configs_carry_the_placement(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "c.yaml", tmp_path, tmp_path / "run", **{"federation.site_devices": {"C": "cuda:1"}}
        )
    )
    assert [n.device for n in node_configs(cfg, gpus=2)] == ["cuda:0", "cuda:1", "cuda:1", "cuda:1"]
    assert "device='cuda:1'" in node_configs(cfg, gpus=2)[1].to_flower()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("gpus", "here"), [(2, "the GPUs present are cuda:0, cuda:1"), (0, "this host has no visible GPU")]
)
def test_a_gpu_that_is_not_there_is_refused_by_key(gpus: int, here: str) -> None:
    with pytest.raises(ConfigError) as e:
        place_sites(SITES, {"C": "cuda:2"}, gpus)
    assert str(e.value).startswith(f"federation.site_devices.C: cuda:2 is not on this host ({here})")


@pytest.mark.unit
def test_a_malformed_device_is_refused_at_config_load(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.yaml", tmp_path, tmp_path / "run", **{"federation.site_devices": {"A": "gpu1"}}
    )
    with pytest.raises(ConfigError, match="site_devices"):
        load_config(path)


@pytest.mark.unit
def test_the_event_log_and_the_store_record_each_sites_device(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", tmp_path, tmp_path / "run"))
    store = CheckpointStore(tmp_path / "store")
    record_placement(store, node_configs(cfg, gpus=3))
    placed = {"A": "cuda:0", "B": "cuda:1", "C": "cuda:2", "D": "cuda:0"}
    assert store.read_manifest()["devices"] == placed
    assert [(e["event"], e["devices"]) for e in read_events(store.events_path)] == [("placement", placed)]


@pytest.mark.integration
def test_federate_refuses_a_missing_gpu_before_any_work(tmp_path: Path) -> None:
    """This host has no GPU (CI's neither): a pin to cuda:0 is one line, and nothing is written."""
    cfg = write_config(
        tmp_path / "c.yaml", tmp_path, tmp_path / "run", **{"federation.site_devices": {"A": "cuda:0"}}
    )
    refused(
        fedattack("federate", "--config", str(cfg)), "federation.site_devices.A: cuda:0", "no visible GPU"
    )
    assert not list((tmp_path / "run").glob("*")), "no split, cache or store before the refusal"
