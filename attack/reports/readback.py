"""The attack's results.json read back (by the study's report, the demo and the study's
resume rule): parsed once into records, with errors that name the file and the key at
fault. What attack.reports.results writes, this reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from attack.measure.core import Cell, Measurement
from attack.reports.figures import CleanFigures, Estimate
from attack.reports.records import ModelResult
from attack.reports.tables import Info
from shared.errors import AttackError


@dataclass(frozen=True)
class Node:
    """A value of a JSON file and where it is (the file, the key path), so that every
    complaint about it names both."""

    value: object
    file: Path
    key: str = ""

    def error(self, problem: str) -> AttackError:
        where = f"key {self.key!r}" if self.key else "the top level"
        return AttackError(
            f"{self.file}: {where} {problem}; the file is not as `fedattack attack` writes it "
            "(rerun the attack to write it again)"
        )

    def _dict(self) -> dict[str, object]:
        if not isinstance(self.value, dict):
            raise self.error(f"should be an object, not {type(self.value).__name__}")
        return self.value

    def _at(self, key: str | int) -> str:
        return f"{self.key}[{key}]" if isinstance(key, int) else f"{self.key}.{key}" if self.key else key

    def __getitem__(self, key: str) -> Node:
        d = self._dict()
        if key not in d:
            raise Node(None, self.file, self._at(key)).error("is missing")
        return Node(d[key], self.file, self._at(key))

    def get(self, key: str) -> Node | None:
        """The key's node; None when it is missing or null."""
        d = self._dict()
        return None if d.get(key) is None else Node(d[key], self.file, self._at(key))

    def items(self) -> list[tuple[str, Node]]:
        return [(k, Node(v, self.file, self._at(k))) for k, v in self._dict().items()]

    def elements(self) -> list[Node]:
        if not isinstance(self.value, list):
            raise self.error(f"should be a list, not {type(self.value).__name__}")
        return [Node(v, self.file, self._at(i)) for i, v in enumerate(self.value)]

    def as_str(self) -> str:
        if not isinstance(self.value, str):
            raise self.error(f"should be a string, not {self.value!r}")
        return self.value

    def as_int(self) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.error(f"should be a whole number, not {self.value!r}")
        return self.value

    def as_float(self) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise self.error(f"should be a number, not {self.value!r}")
        return float(self.value)

    def as_bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"should be true or false, not {self.value!r}")
        return self.value


def read_json(path: Path) -> Node:
    try:
        return Node(json.loads(path.read_text()), path)
    except OSError as e:
        raise AttackError(f"{path}: cannot be read ({e.strerror}); run the attack to write it") from None
    except ValueError as e:
        raise AttackError(f"{path}: not valid JSON ({e}); rerun the attack to write it again") from None


def _optional(node: Node, key: str) -> float | None:
    found = node.get(key)
    return None if found is None else found.as_float()


def estimate(node: Node) -> Estimate:
    return Estimate(_optional(node, "value"), _optional(node, "low"), _optional(node, "high"))


def clean_figures(node: Node) -> CleanFigures:
    return CleanFigures(
        node["n_positive"].as_int(),
        node["n_negative"].as_int(),
        estimate(node["auc"]),
        estimate(node["sensitivity"]),
        estimate(node["specificity"]),
    )


def model_result(node: Node) -> ModelResult:
    site = node.get("site")
    return ModelResult(
        node["name"].as_str(),
        node["arch"].as_str(),
        node["kind"].as_str(),
        None if site is None else site.as_str(),
        node["sha256"].as_str(),
        clean_figures(node["clean_test"]),
        node["clean_correct_on_attack_set"].as_int(),
    )


def read_models(path: Path) -> list[ModelResult]:
    """The models of the attack's results.json (attack.reports.results.study_json)."""
    return [model_result(n) for n in read_json(path)["models"].elements()]


def _cell(node: Node) -> Cell:
    control = node["n_control_misclassified"]
    return Cell(
        node["source"].as_str(),
        node["target"].as_str(),
        node["n_correct_before"].as_int(),
        node["n_misclassified_after"].as_int(),
        None if control.value is None else control.as_int(),
        node["white_box"].as_bool(),
        _optional_int(node, "n_shuffled_misclassified"),
        _optional_int(node, "n_fooling_images"),
        _optional_int(node, "n_fooled"),
    )


def _optional_int(node: Node, key: str) -> int | None:
    """A count that older results.json files (or other attacks) do not hold."""
    v = node.get(key)
    return None if v is None or v.value is None else v.as_int()


def read_measurement(path: Path) -> tuple[Measurement, dict[str, Info]]:
    """A results.json's cells back as a Measurement (attack.reports.results.measurement_json),
    and each source's Info."""
    top = read_json(path)
    cells = [_cell(c) for c in top["cells"].elements()]
    sources = {s: Info(s, v["arch"].as_str(), v["kind"].as_str()) for s, v in top["sources"].items()}
    targets = list(dict.fromkeys(c.target for c in cells))
    m = Measurement(top["attack"].as_str(), top["eps"].as_float(), list(sources), targets, cells=cells)
    for s, v in top["sources"].items():
        seen = v.get("perceptual")
        if seen is not None:
            m.perceptual[s] = {k: x.as_float() for k, x in seen.items()}
    return m, sources


@dataclass(frozen=True)
class VariantRecords:
    """One store's attack results read back once: its models (the attack's results.json)
    and each (attack, threat)'s measurement with its sources' Info (the suite's), keyed
    "attack/threat". The study's report and its tidy tables are both made from these."""

    models: list[ModelResult]
    measured: dict[str, tuple[Measurement, dict[str, Info]]]


def read_variant(attack_dir: Path, attacks: tuple[str, ...], threats: tuple[str, ...]) -> VariantRecords:
    """`fedattack attack`'s outputs in `attack_dir` for every (attack, threat)."""
    return VariantRecords(
        read_models(attack_dir / "results.json"),
        {
            f"{a}/{t}": read_measurement(attack_dir / "suite" / f"{a}-{t}" / "results.json")
            for a in attacks
            for t in threats
        },
    )


def recorded_ensemble_mode(path: Path) -> str | None:
    """The ensemble mode a suite results.json was crafted with; None when the file is
    missing, unreadable, or from before the mode was recorded."""
    try:
        ensemble = read_json(path).get("ensemble")
        mode = None if ensemble is None else ensemble.get("mode")
        return None if mode is None else mode.as_str()
    except AttackError:
        return None
