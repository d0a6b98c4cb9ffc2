"""The report records: what the attack's writers publish in results.json reads back as the
same records (the study's report and the demo read them), results.json keeps its key
order, and a malformed results.json is refused with the file and the key at fault."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attack.measure.clean import CleanPerformance
from attack.measure.core import Cell, Measurement, Settings
from attack.reports.figures import CleanFigures, Estimate
from attack.reports.provenance import provenance
from attack.reports.readback import read_measurement, read_models, recorded_ensemble_mode
from attack.reports.records import Ensemble, ModelResult, RunMeta, Skipped, SuiteMeta, SuiteRow
from attack.reports.results import study_json, suite_json
from attack.reports.tables import Info, by_target_group, over_control
from attack.reports.variants import variant_summary
from attack.stats import auc_delong, wilson
from shared.config.study import StudyConfig, Variant
from shared.errors import AttackError

pytestmark = pytest.mark.unit

INFO = {
    n: Info(n, arch, kind, site)
    for n, arch, kind, site in [
        ("resnet18-global", "resnet18", "global", None),
        ("resnet18-local-A", "resnet18", "local", "A"),
        ("resnet18-local-B", "resnet18", "local", "B"),
    ]
}
NAMES = list(INFO)
PROVENANCE = provenance(Settings(4, torch.device("cpu"), torch.float32, 0, 0.5), "fingerprint")


def _measurement(attack: str = "fgsm") -> Measurement:
    m = Measurement(attack, 0.02, list(NAMES), list(NAMES))
    m.attacked = {n: [f"test_nih/{i}" for i in range(12 + k)] for k, n in enumerate(NAMES)}
    m.attacked["resnet18-local-B"] = []  # an empty row: its cells count nothing
    m.code_digest = {n: "0" * 64 for n in NAMES}
    pairs = [(s, t) for s in NAMES for t in NAMES]
    m.cells = [
        Cell(s, t, 12 + i, i, None if i == 4 else i // 2, s == t)  # cell 4: no control counted
        if m.attacked[s]
        else Cell(s, t, 0, 0, 0, s == t)
        for i, (s, t) in enumerate(pairs)
    ]
    m.clean_correct = {n: 20 + k for k, n in enumerate(NAMES)}
    return m


def _clean(seed: int) -> CleanPerformance:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    return CleanPerformance(
        int(labels.sum()),
        int((1 - labels).sum()),
        auc_delong(rng.normal(size=40) + labels, labels),
        wilson(7, 11),
        wilson(0, 0),  # undefined: None in the JSON
    )


CLEAN = {n: _clean(k) for k, n in enumerate(NAMES)}
HASHES = {n: f"{k:064x}" for k, n in enumerate(NAMES)}
META = RunMeta(
    "fgsm", 0.02, "member", 0, "/store", 36, "36 from test_nih", 64, (Skipped("bad", "hash"),), PROVENANCE
)


def _write_attack(folder: Path, attacks: tuple[str, ...] = ("fgsm",)) -> None:
    """An attack folder as `fedattack attack` leaves it: results.json and a suite folder
    per (attack, member threat)."""
    m = _measurement()
    (folder / "suite").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(study_json(m, INFO, CLEAN, HASHES, META, 0), indent=1))
    meta = SuiteMeta(0, 36, PROVENANCE, Ensemble("scaled", {}))
    for attack in attacks:
        mm = _measurement(attack)
        row = SuiteRow("member", 0.02, mm, by_target_group(mm, INFO, 0), over_control(mm, 0), "x")
        path = folder / "suite" / f"{attack}-member" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps(suite_json(meta, row, INFO, 0), indent=1))


def test_models_and_cells_read_back_as_the_records_written(tmp_path: Path) -> None:
    _write_attack(tmp_path)
    expected = [
        ModelResult(n, INFO[n].arch, INFO[n].kind, INFO[n].site, HASHES[n], CleanFigures.of(CLEAN[n]), 20 + k)
        for k, n in enumerate(NAMES)
    ]
    models = read_models(tmp_path / "results.json")
    assert models == expected
    assert models[0].clean_test.specificity == Estimate(None, None, None)
    m, sources = read_measurement(tmp_path / "suite" / "fgsm-member" / "results.json")
    written = _measurement()
    assert (m.attack, m.eps, m.sources, m.targets, m.cells) == (
        written.attack,
        written.eps,
        written.sources,
        written.targets,
        written.cells,
    )
    assert sources == {n: Info(n, INFO[n].arch, INFO[n].kind) for n in NAMES}


def test_results_json_keeps_its_key_order(tmp_path: Path) -> None:
    _write_attack(tmp_path)
    body = json.loads((tmp_path / "results.json").read_text())
    assert list(body) == [
        "attack", "eps", "threat", "seed", "store", "n_images", "n_images_by_set", "image_size",
        "skipped", "provenance", "models", "sources", "cells", "by_target_group", "global_vs_local",
        "flagged_cells", "study_table", "cell_view",
    ]  # fmt: skip
    suite = json.loads((tmp_path / "suite" / "fgsm-member" / "results.json").read_text())
    assert list(suite) == [
        "seed", "n_images", "provenance", "ensemble", "eps", "threat", "attack", "sources", "cells",
        "by_target_group", "global_vs_local", "flagged_cells", "over_control",
    ]  # fmt: skip
    assert body["skipped"] == [{"name": "bad", "reason": "hash"}]
    assert recorded_ensemble_mode(tmp_path / "suite" / "fgsm-member" / "results.json") == "scaled"


def _edit(path: Path, change) -> None:
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda b: b["models"][1]["clean_test"].pop("auc"), "key 'models[1].clean_test.auc' is missing"),
        (
            lambda b: b["models"][0].update(clean_correct_on_attack_set="20"),
            "key 'models[0].clean_correct_on_attack_set' should be a whole number, not '20'",
        ),
        (lambda b: b.update(models={}), "key 'models' should be a list, not dict"),
        (
            lambda b: b["models"][2]["clean_test"]["sensitivity"].update(low="x"),
            "key 'models[2].clean_test.sensitivity.low' should be a number",
        ),
    ],
)
def test_a_malformed_results_json_is_named_by_file_and_key(tmp_path: Path, change, needle: str) -> None:
    _write_attack(tmp_path)
    path = tmp_path / "results.json"
    _edit(path, change)
    with pytest.raises(AttackError, match="rerun") as e:
        read_models(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value)


def test_a_malformed_suite_result_fails_the_variant_naming_it(tmp_path: Path) -> None:
    """The study reports a variant whose results are malformed as failed (an AttackError),
    naming the file and the key, instead of a KeyError."""
    _write_attack(tmp_path, ("fgsm", "pgd"))
    study = StudyConfig((Variant("baseline"),), ("fgsm", "pgd"), ("member",), "pgd")
    summary = variant_summary(tmp_path, study, 0.02, 0)
    assert set(summary.architectures["resnet18"].transfer) == {"fgsm/member", "pgd/member"}
    bad = tmp_path / "suite" / "pgd-member" / "results.json"
    _edit(bad, lambda b: b["cells"][3].update(white_box=1))
    with pytest.raises(AttackError, match=rf"^{bad}: key 'cells\[3\]\.white_box' should be true or false"):
        variant_summary(tmp_path, study, 0.02, 0)
    bad.write_text('{"cells": [')
    with pytest.raises(AttackError, match=rf"^{bad}: not valid JSON"):
        variant_summary(tmp_path, study, 0.02, 0)
    assert recorded_ensemble_mode(bad) is None
    bad.unlink()
    with pytest.raises(AttackError, match=rf"^{bad}: cannot be read"):
        variant_summary(tmp_path, study, 0.02, 0)
    assert recorded_ensemble_mode(bad) is None
