"""Site partitions (issue 32): N named sites, IID / quantity / label-skewed Dirichlet shards,
patient-level, seeded, recorded in the manifests and the fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploy.local import node_configs
from shared.config.data import PartitionConfig, SplitConfig, site_index
from shared.config.experiment import load_config
from shared.config.node import NodeConfig
from shared.data.fingerprint import manifest_digest
from shared.data.manifest import load_manifest
from shared.data.records import Sample
from shared.errors import ConfigError, SplitError
from shared.prep.check import check_data, format_reports
from shared.prep.splits import make_splits, split_patients
from shared.prep.synth.twin import synthesize
from tests.conftest import write_config

pytestmark = pytest.mark.unit

SITES = ("s1", "s2", "s3", "s4", "s5")


def _samples(patients: int = 1000, positive_rate: float = 0.4) -> tuple[Sample, ...]:
    """Two images per patient; the first `positive_rate` of the patients have pneumonia."""
    n_pos = round(patients * positive_rate)
    return tuple(
        Sample(f"p{i}-{k}", f"p{i}", f"p{i}-{k}.png", int(i < n_pos))
        for i in range(patients)
        for k in range(2)
    )


def _split(kind: str, alpha: float = 0.5, seed: int = 1) -> dict[str, dict[str, list[Sample]]]:
    partition = PartitionConfig(kind, alpha) if kind != "iid" else PartitionConfig()  # type: ignore[arg-type]
    return split_patients(_samples(), SITES, SplitConfig(), seed, "nih", None, partition)


def _site_stats(groups: dict[str, dict[str, list[Sample]]]) -> dict[str, tuple[int, float]]:
    """site -> (images, positive rate) over train and val."""
    out = {}
    for site in SITES:
        samples = groups[site]["train"] + groups[site]["val"]
        out[site] = (len(samples), sum(s.label for s in samples) / max(1, len(samples)))
    return out


def test_label_dirichlet_large_alpha_is_iid_small_alpha_skews() -> None:
    near_iid = _site_stats(_split("label", alpha=1000.0))
    skewed = _site_stats(_split("label", alpha=0.1))
    iid_rates = [r for _, r in near_iid.values()]
    skew_rates = [r for _, r in skewed.values()]
    print("label alpha=1000:", near_iid, "\nlabel alpha=0.1:", skewed)
    assert max(iid_rates) - min(iid_rates) < 0.08, near_iid  # every site near the 40% of the dataset
    assert max(skew_rates) - min(skew_rates) > 0.4, skewed


def test_quantity_dirichlet_skews_sizes_not_rates() -> None:
    stats = _site_stats(_split("quantity", alpha=0.5))
    sizes = sorted(n for n, _ in stats.values())
    assert sizes[-1] > 3 * sizes[1], stats  # one draw: shares far from 1/5 each
    rates = [r for n, r in stats.values() if n >= 60]
    assert max(rates) - min(rates) < 0.1, stats
    even = _site_stats(_split("quantity", alpha=1000.0))
    assert max(n for n, _ in even.values()) - min(n for n, _ in even.values()) < 60, even


@pytest.mark.parametrize("kind", ["iid", "quantity", "label"])
def test_partition_is_patient_level_complete_and_seeded(kind: str) -> None:
    groups = _split(kind)
    owner: dict[str, str] = {}
    for group, parts in groups.items():
        for sample in (s for part in parts.values() for s in part):
            assert owner.setdefault(sample.patient_id, group) == group, f"{sample.patient_id} in two groups"
    assert len(owner) == 1000  # every patient placed, none twice
    per_group = {g: sorted(s.image_id for p in parts.values() for s in p) for g, parts in groups.items()}
    assert all(len(ids) % 2 == 0 for ids in per_group.values())  # both images of a patient together
    again = _split(kind)
    assert again == groups
    other = _split(kind, seed=2)
    assert other != groups


def test_iid_partition_is_the_round_robin_it_always_was() -> None:
    """No partition given and the iid partition give the same split (the stored studies' split)."""
    samples = _samples(200)
    plain = split_patients(samples, ("A", "B"), SplitConfig(), 7, "nih")
    iid = split_patients(samples, ("A", "B"), SplitConfig(), 7, "nih", None, PartitionConfig())
    assert plain == iid


@pytest.fixture(scope="module")
def five_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five named sites over a twin of 160 patients at 64 px (three sites need more patients
    than the shared twin's 48); NIH's three label-skewed (alpha 5)."""
    tmp = tmp_path_factory.mktemp("five")
    synthesize(tmp / "data", patients=160, size=64, seed=4, positive_rate=0.5)
    return write_config(
        tmp / "cfg.yaml",
        tmp / "data",
        tmp / "run",
        **{
            "data.datasets.nih.sites": ["north", "south", "east"],
            "data.datasets.nih.partition": {"kind": "label", "alpha": 5.0},
            "data.datasets.rsna.sites": ["D", "west"],
            "federation.min_sites": 5,
        },
    )


def test_n_named_sites_split_record_partition_and_start_n_supernodes(five_sites: Path) -> None:
    cfg = load_config(five_sites)
    assert cfg.data.sites == ("D", "north", "south", "east", "west")  # A..D first, then as listed
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    assert {n for n in paths if n.startswith("site_")} == {f"site_{s}" for s in cfg.data.sites}
    north = load_manifest(paths["site_north"])
    assert north.partition == "label dirichlet alpha=5"
    assert json.loads(paths["site_north"].read_text())["partition"] == "label dirichlet alpha=5"
    assert "partition" not in json.loads(paths["site_west"].read_text())  # iid: the file as always
    fingerprint = json.loads((cfg.splits_dir / "fingerprint.json").read_text())["manifests"]
    assert fingerprint["site_north"] == manifest_digest(north)
    unrecorded = type(north)(north.name, north.dataset, north.kind, north.data_root, north.parts)
    assert manifest_digest(unrecorded) != fingerprint["site_north"]  # the partition is in the digest
    nodes = node_configs(cfg)
    assert [n.site for n in nodes] == list(cfg.data.sites)
    assert [site_index(s, cfg.data.sites) for s in cfg.data.sites] == [3, 4, 5, 6, 7]


def test_a_sites_exported_shard_keeps_its_partition_and_digest(five_sites: Path, tmp_path: Path) -> None:
    """`deploy prepare-data` copies a label-skewed shard into the site's folder: the copy
    records the partition, so the site's digest is still the split's fingerprint's."""
    from deploy.hosts.export import export_manifest

    cfg = load_config(five_sites)
    paths = make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    north = load_manifest(paths["site_north"])
    folder = tmp_path / "north"
    export_manifest(north, folder, folder / "site_north.json", skip_missing=False)
    copy = load_manifest(folder / "site_north.json")
    assert copy.partition == "label dirichlet alpha=5" and copy.data_root == folder
    fingerprint = json.loads((cfg.splits_dir / "fingerprint.json").read_text())["manifests"]
    assert manifest_digest(copy) == fingerprint["site_north"]


def test_data_check_prints_each_sites_size_and_positive_rate(five_sites: Path) -> None:
    cfg = load_config(five_sites)
    text = format_reports(check_data(cfg))
    lines = {ln.split(":")[0].strip(): ln for ln in text.splitlines() if ln.startswith("  ")}
    assert set(lines) == set(cfg.data.sites)
    north = load_manifest(cfg.splits_dir / "site_north.json")
    n = sum(len(p) for p in north.parts.values())
    pos = sum(s.label for p in north.parts.values() for s in p)
    assert f"north: {n} images, {pos / n:.1%} positive (nih, label dirichlet alpha=5)" in lines["north"]


def test_skewed_partition_leaving_a_site_one_label_names_site_and_alpha(
    tmp_path: Path, synth_dir: Path
) -> None:
    cfg_path = write_config(
        tmp_path / "cfg.yaml",
        synth_dir,
        tmp_path / "run",
        **{
            "data.datasets.nih.sites": ["A", "B", "E"],
            "data.datasets.nih.partition": {"kind": "label", "alpha": 0.05},
        },
    )
    cfg = load_config(cfg_path)
    with pytest.raises(
        SplitError,
        match=r"site \w \(nih\) part '\w+' (is empty|has only label \d) after the "
        r"label-skewed partition with alpha 0\.05; raise data\.datasets\.nih\.partition\.alpha",
    ):
        make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    assert not list(cfg.splits_dir.glob("site_*.json"))  # nothing written on refusal


def test_site_named_twice_is_refused_at_load(tmp_path: Path, synth_dir: Path) -> None:
    path = write_config(
        tmp_path / "c.yaml", synth_dir, tmp_path / "run", **{"data.datasets.rsna.sites": ["C", "A"]}
    )
    with pytest.raises(ConfigError, match="site A already belongs to nih"):
        load_config(path)
    path = write_config(
        tmp_path / "d.yaml", synth_dir, tmp_path / "run", **{"data.datasets.rsna.sites": ["C", "C"]}
    )
    with pytest.raises(ConfigError, match=r"data\.datasets\.rsna\.sites: site C is named twice"):
        load_config(path)
    with pytest.raises(ValueError, match="only a quantity or label partition"):
        PartitionConfig("iid", 2.0)
    assert np.isclose(PartitionConfig("quantity", 0.3).alpha, 0.3)


def test_a_supernode_takes_any_site_name_and_refuses_a_bad_one(five_sites: Path) -> None:
    cfg = load_config(five_sites)
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    manifest = str(cfg.splits_dir / "site_north.json")
    assert NodeConfig.from_flower({"site": "north", "manifest": manifest}).site == "north"
    with pytest.raises(ConfigError, match=r"node config: 'site' must be a site name of data\.sites .*'x/y'"):
        NodeConfig.from_flower({"site": "x/y", "manifest": manifest})
    with pytest.raises(ValueError, match="site 'nowhere' is not one of the run's sites"):
        site_index("nowhere", cfg.data.sites)
