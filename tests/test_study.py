"""`fedattack study`: bad variants refused before any training; a tiny real study (two
variants on Flower, attacked, compared) whose report holds every variant's figures, that
reports a failed variant without losing the others, whose FedProx variant took the sites'
proximal updates, and that resumes without training again."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from attack.reports.compare import defense_effects, defense_effects_md
from attack.reports.figures import Estimate, PairedFigure
from attack.reports.summary import ArchSummary, Counts, LocalAucs, VariantSummary
from attack.reports.variants import _paired, _pct
from attack.stats import newcombe
from clients.site import Instructions, train_site
from deploy.local import node_configs
from pipeline.study import variant_configs
from shared.config.experiment import ExperimentConfig
from shared.config.run import RunSettings, run_settings_for
from shared.ml.wire import to_record
from shared.store.folder import CheckpointStore
from tests.cli_helpers import fedattack, refused
from tests.flower_helpers import tiny_data, tiny_federation_config


def _study_config(tmp: Path, data: Path, variants: list[dict], **study) -> Path:
    path = tiny_federation_config(tmp, data, ["resnet18"], rounds=1)
    raw = yaml.safe_load(path.read_text())
    raw["attack"]["iterative"] = {"steps": 2}
    raw["study"] = {"variants": variants, "attacks": ["fgsm", "pgd"], "threats": ["member"], **study}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.integration
@pytest.mark.parametrize(
    ("variants", "needles"),
    [
        ([{"name": "a"}, {"name": "a"}], ["duplicate name 'a'"]),
        ([{"name": "x", "overrides": {"federation.strategy": "sgd"}}], ["variant", "federation.strategy"]),
        (
            [{"name": "adv", "overrides": {"training.adversarial": {"attack": "pgd", "eps": 2.0}}}],
            ["variant 'adv'", "adversarial.eps"],
        ),
        ([{"name": "s", "overrides": {"seed": 3}}], ["'seed' may not differ"]),
        ([{"name": "bad name!"}], ["bad name!"]),
    ],
)
def test_bad_variants_are_refused_before_any_training(tmp_path: Path, variants, needles) -> None:
    cfg = _study_config(tmp_path, tmp_path / "no-data", variants)
    refused(fedattack("study", "--config", str(cfg)), *needles)
    assert not (tmp_path / "run" / "variants").exists()


@pytest.mark.integration
def test_a_seeds_list_with_duplicates_is_refused_before_any_training(tmp_path: Path) -> None:
    cfg = _study_config(tmp_path, tmp_path / "no-data", [{"name": "a"}])
    refused(fedattack("study", "--config", str(cfg), "--seeds", "7,8,7"), "study.seeds: 7 is given twice")
    refused(fedattack("study", "--config", str(cfg), "--seeds", "7,x"), "--seeds '7,x'", "list of numbers")
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_an_outsider_without_a_public_split_is_refused_before_any_training(tmp_path: Path) -> None:
    """The suite's own checks run for every variant before the first federation (they used
    to run only after a variant had trained)."""
    cfg = _study_config(tmp_path, tmp_path / "no-data", [{"name": "a"}], threats=["member", "outsider"])
    refused(fedattack("study", "--config", str(cfg)), "public_fraction is 0")
    assert not (tmp_path / "run" / "variants").exists()


@pytest.mark.unit
def test_report_words_survive_figures_without_an_interval() -> None:
    """One source pair, or an outsider with a single usable surrogate: no interval, no p."""
    one = PairedFigure(1, Estimate(-0.05, None, None), None, exact=True, significant=False)
    assert (
        _paired(one)
        == "global minus local targets -5.0 points (no interval) over 1 sources, p = n/a (not significant)"
    )
    assert _pct(Estimate(0.5, None, None)) == "50.0% (no interval)"


def _arch(k: int, n: int, auc: float) -> ArchSummary:
    none, aucs = Estimate(None, None, None), LocalAucs(None, None, None, 0)
    return ArchSummary(Estimate(auc, None, None), aucs, none, Counts(k, n), none, {})


def _variant(**archs: ArchSummary) -> VariantSummary:
    return VariantSummary(archs, {}, {}, eps=0.02)


@pytest.mark.unit
def test_defense_effects_give_the_difference_its_interval_and_a_verdict() -> None:
    variants = {
        "baseline": _variant(a=_arch(1, 20, 0.90), b=_arch(5, 20, 0.85)),
        "adversarial": _variant(a=_arch(15, 20, 0.80), b=_arch(7, 21, 0.80)),
        "fedbn": _variant(a=_arch(0, 18, 0.88)),
    }
    rows = {(r.variant, r.arch): r for r in defense_effects(variants)}
    assert set(rows) == {("adversarial", "a"), ("adversarial", "b"), ("fedbn", "a")}
    raised = rows[("adversarial", "a")]
    d = newcombe(15, 20, 1, 20)
    assert raised.difference.value == pytest.approx(0.7)
    assert raised.difference.low == pytest.approx(d.low, abs=1e-6) and d.low > 0
    assert raised.verdict.startswith("**raised**")
    assert raised.clean_auc_change == pytest.approx(-0.10)
    assert rows[("adversarial", "b")].verdict.startswith("not significant")
    assert rows[("fedbn", "a")].verdict.startswith("not significant")  # 0/18 vs 1/20
    md = "\n".join(defense_effects_md(variants, "pgd"))
    assert "| adversarial | a | 15/20 | 1/20 | +70.0 points [" in md and "| -0.100 |" in md
    assert defense_effects({"baseline": variants["baseline"]}) == []


@pytest.mark.integration
def test_a_config_without_study_section_is_refused(tmp_path: Path) -> None:
    cfg = tiny_federation_config(tmp_path, tmp_path / "no-data", ["resnet18"], rounds=1)
    refused(fedattack("study", "--config", str(cfg)), "no 'study' section")


@pytest.mark.e2e
@pytest.mark.xdist_group("tiny-study")  # a unit of work of its own (tests/conftest.py)
def test_tiny_study_trains_attacks_compares_and_resumes(tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "d")
    variants: list[dict] = [
        {"name": "baseline"},
        {"name": "fedprox", "overrides": {"federation.strategy": "fedprox", "federation.proximal_mu": 5.0}},
        {"name": "broken", "overrides": {"federation.round_timeout_s": 0.001}},
    ]
    cfg = _study_config(tmp_path, data, variants)
    raw = yaml.safe_load(cfg.read_text())
    raw["federation"]["pooled_baseline"] = True  # each variant's store also holds the pooled model
    cfg.write_text(yaml.safe_dump(raw))
    first = fedattack("study", "--config", str(cfg), timeout=1500)
    text = first.stdout + first.stderr
    assert first.returncode == 2, text[-3000:]  # one variant failed: a non-zero exit, after the report
    assert "Traceback" not in text
    assert "variant(s) broken failed" in first.stderr
    out = tmp_path / "run"
    study = json.loads((out / "study.json").read_text())
    assert isinstance(study["variants"]["broken"], str)
    md = (out / "study.md").read_text()
    assert "**broken failed**" in md and (out / "study.png").stat().st_size > 1000
    for name in ("baseline", "fedprox"):
        v = study["variants"][name]
        row = v["architectures"]["resnet18"]
        assert row["clean_auc_global"]["value"] is not None
        robust = row["robust_accuracy_global"]
        assert robust["value"] is not None and robust["low"] <= robust["value"] <= robust["high"]
        assert set(row["transfer"]) == {"fgsm/member", "pgd/member"}
        assert "as_source" in row["transfer"]["pgd/member"]
        assert f"| {name} | resnet18 |" in md
        assert row["clean_auc_pooled"]["value"] is not None  # the pooled baseline, measured
        assert f"| {name} | resnet18 (pooled) |" in md
        # the figure is the model's own white-box cell of the pgd/member measurement
        suite = out / "variants" / name / "attack" / "suite"
        cells = json.loads((suite / "pgd-member" / "results.json").read_text())["cells"]
        own = next(c for c in cells if c["white_box"] and c["target"] == "resnet18-global")
        n = own["n_correct_before"]
        assert robust["value"] == pytest.approx((n - own["n_misclassified_after"]) / n, abs=1e-6)  # 6 digits
        assert row["robust_counts_global"] == {"k": n - own["n_misclassified_after"], "n": n}
    assert "## What each defense changes for the global models, against baseline" in md
    assert "| fedprox | resnet18 |" in md.split("## What each defense changes")[1]
    manifest = json.loads((out / "variants/fedprox/checkpoints/manifest.json").read_text())
    strategies = {m["training"]["strategy"] for m in manifest["models"] if m["kind"] != "pooled"}
    assert strategies == {"fedprox mu 5"}
    assert {m["name"]: m["kind"] for m in manifest["models"]}["resnet18-pooled"] == "pooled"
    # the tidy tables: every cell of both variants that ran, every model's clean figures
    with (out / "transfer.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["variant"], r["attack"], r["seed"]) for r in rows} == {
        (v, a, "7") for v in ("baseline", "fedprox") for a in ("fgsm", "pgd")
    }
    own = next(
        r
        for r in rows
        if (r["variant"], r["attack"], r["target"], r["white_box"])
        == ("fedprox", "pgd", "resnet18-global", "true")
    )
    cells = json.loads((out / "variants/fedprox/attack/suite/pgd-member/results.json").read_text())["cells"]
    cell = next(c for c in cells if c["white_box"] and c["target"] == "resnet18-global")
    assert (int(own["n_correct_before"]), int(own["n_misclassified_after"])) == (
        cell["n_correct_before"],
        cell["n_misclassified_after"],
    )
    with (out / "clean.csv").open(newline="") as f:
        clean = list(csv.DictReader(f))
    models = {
        v: json.loads((out / f"variants/{v}/attack/results.json").read_text())["models"]
        for v in ("baseline", "fedprox")
    }
    assert [(r["variant"], r["model"]) for r in clean] == [
        (v, m["name"]) for v, ms in models.items() for m in ms
    ]
    assert all(r["auc"] for r in clean)

    _fedprox_took_the_sites_proximal_updates(variant_configs(cfg, None)[1]["fedprox"])

    # resumed, with replicates: seed 7 is the baseline above (not trained again, its figures
    # kept), seed 8 a new federation on seed 7's split; the baseline alone (one more
    # federation, not one per variant)
    stamp = (out / "variants/baseline/checkpoints/manifest.json").stat().st_mtime_ns
    raw = yaml.safe_load(cfg.read_text())
    raw["study"]["variants"] = [{"name": "baseline"}]
    cfg.write_text(yaml.safe_dump(raw))
    third = fedattack("study", "--config", str(cfg), "--seeds", "7,8", timeout=1500)
    assert third.returncode == 0 and "Traceback" not in third.stdout + third.stderr, third.stderr[-3000:]
    assert third.stdout.count("not trained again") == 1, third.stdout[-3000:]
    assert (out / "variants/baseline/checkpoints/manifest.json").stat().st_mtime_ns == stamp
    over = json.loads((out / "study.json").read_text())
    assert over["seeds"] == [7, 8]
    auc = over["replicates"]["baseline"]["resnet18"]["clean AUC, global"]
    per_seed = [json.loads((out / f"seeds/{s}/study.json").read_text()) for s in (7, 8)]
    assert per_seed[0]["variants"]["baseline"] == study["variants"]["baseline"]
    values = [
        p["variants"]["baseline"]["architectures"]["resnet18"]["clean_auc_global"]["value"] for p in per_seed
    ]
    assert auc["values"] == values and auc["mean"] == pytest.approx(sum(values) / 2, abs=1e-6)
    assert over["pooled_global_vs_local"]["baseline"]["pgd/member"]["seeds"] == 2
    eight = out / "seeds/8/variants/baseline"
    trained = yaml.safe_load((eight / "checkpoints/config.yaml").read_text())
    assert (trained["seed"], trained["split_seed"]) == (8, 7)
    assert (eight / "splits/fingerprint.json").read_text() == (
        out / "variants/baseline/splits/fingerprint.json"
    ).read_text()
    assert (out / "study.md").read_text().startswith("# Study over 2 seeds")
    assert {r.split(",")[0] for r in (out / "transfer.csv").read_text().splitlines()[1:]} == {"7", "8"}


def _fedprox_took_the_sites_proximal_updates(cfg: ExperimentConfig) -> None:
    """The FedProx variant on Flower: each site's update recomputed offline (same code,
    seeds, CPU) with the proximal-mu Flower sent averages to the stored round-1 global;
    recomputed without the proximal term, it does not."""
    store = CheckpointStore(cfg.store_dir)
    run = RunSettings.from_run_config(run_settings_for(cfg, "resnet18", store.root, False).to_run_config())
    rounds = {r["round"]: r for r in store.read_manifest()["rounds"]}
    received = to_record(store.load(rounds[0]["file"], rounds[0]["sha256"]))
    stored = store.load(rounds[1]["file"], rounds[1]["sha256"])["net.fc.weight"].double()
    for mu, should_match in ((5.0, True), (0.0, False)):
        results = [
            train_site(node, run, received, Instructions(server_round=1, proximal_mu=mu))
            for node in node_configs(cfg)
        ]
        weights = torch.tensor([float(r.metrics["num-examples"]) for r in results], dtype=torch.float64)
        states = torch.stack([r.state["net.fc.weight"].double() for r in results])
        mean = (states * weights.view(-1, 1, 1)).sum(0) / weights.sum()
        assert torch.allclose(stored, mean, rtol=1e-4, atol=1e-6) is should_match, mu
