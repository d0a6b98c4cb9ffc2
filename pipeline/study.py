"""`fedattack study`: one federation per variant of the config (baseline, each defense),
on the same data, splits and seed, each attacked by the same attacks and threat models on
the same held-out images; one report compares them (attack.reports.variants).

With replicate seeds (`study.seeds`, `--seeds 7,8,9`) every variant is trained once per
seed, all on the split of the config's seed: the config's own seed keeps the single-seed
layout (output_dir/variants/<name>), any other seed goes to output_dir/seeds/<seed>/; each
seed's report goes to output_dir/seeds/<seed>/, and study.md becomes the report over
seeds (attack.reports.replicates).

Resumable: a variant whose store is complete and was trained with the same resolved
config is not trained again, and its attack is not rerun when its results are there. A
variant that fails is reported as failed; the others' stores and results stay intact."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config.experiment import ExperimentConfig, load_config
from shared.errors import ConfigError, FedAttackError
from shared.io import ensure_writable_dir
from shared.store.folder import CheckpointStore

if TYPE_CHECKING:
    from attack.reports.readback import VariantRecords
    from attack.reports.summary import StudyMeta, VariantSummary

log = logging.getLogger(__name__)


def variant_configs(
    config: Path, out: str | None, seed: int | None = None
) -> tuple[ExperimentConfig, dict[str, ExperimentConfig]]:
    """The base config and every variant's, all validated before anything is trained;
    with `seed` (a replicate), the variants' federations take that seed and keep the base
    config's split."""
    base = load_config(config, {"output_dir": out} if out else {})
    if base.study is None:
        raise ConfigError(
            f"{config}: no 'study' section; add study.variants (see configs/study-defenses.yaml)"
        )
    out_dir = str(replicate_dir(base, seed))
    fixed: dict[str, object] = {"study": None}
    if seed is not None and seed != base.seed:
        fixed.update(seed=seed, split_seed=base.splitting_seed)
    cfgs = {}
    for v in base.study.variants:
        try:
            cfgs[v.name] = load_config(
                config, {**v.overrides, "output_dir": f"{out_dir}/variants/{v.name}", **fixed}
            )
        except ConfigError as e:
            raise ConfigError(f"study variant {v.name!r}: {e}") from None
    return base, cfgs


def replicate_dir(base: ExperimentConfig, seed: int | None) -> Path:
    """Where a replicate's variants and outsider surrogates go: the config's own seed
    keeps the single-seed layout, so that a finished study is the first replicate."""
    return base.output_dir if seed is None or seed == base.seed else base.output_dir / "seeds" / str(seed)


def replicate_configs(
    config: Path, out: str | None, seeds: tuple[int, ...]
) -> tuple[ExperimentConfig, dict[int, dict[str, ExperimentConfig]]]:
    """Every replicate's variant configs (seed -> variant -> config), validated up front;
    without replicate seeds (`study.seeds` and `seeds` empty), the config's seed alone."""
    overrides: dict[str, object] = {"output_dir": out} if out else {}
    base = variant_configs(config, out)[0]  # refuses a config without a study section
    if seeds:
        base = load_config(config, {**overrides, "study.seeds": list(seeds)})
    assert base.study is not None
    chosen = base.study.seeds or (base.seed,)
    return base, {s: variant_configs(config, out, s)[1] for s in chosen}


def _trained_already(cfg: ExperimentConfig) -> bool:
    """A complete store trained with this very config (the federation saves it there)."""
    store = CheckpointStore(cfg.store_dir)
    if not store.is_complete() or not store.config_path.exists():
        return False
    return load_config(store.config_path).to_dict() == cfg.to_dict()


def run_variant(
    cfg: ExperimentConfig, attacks: tuple[str, ...], threats: tuple[str, ...], outsider_dir: Path
) -> bool:
    """Train (unless done) and attack (unless done) one variant; True if it trained now.
    The outsider's surrogates never depend on the variant (public split, seed): they are
    trained once, in `outsider_dir`, and reused by every variant (hash-checked)."""
    from attack.measure.core import SuiteRequest
    from attack.service import run_attack
    from deploy.local import federate

    trained = not _trained_already(cfg)
    if trained:
        federate(cfg)
    else:
        print(f"  store complete for this config: {cfg.store_dir} (not trained again)", flush=True)
    done = all(_attacked_already(cfg, a, t) for a in attacks for t in threats)
    if trained or not done or not (cfg.attack_dir / "results.json").exists():
        suite = SuiteRequest(attacks, threats, (), (), outsider_dir)
        run_attack(cfg, str(cfg.store_dir), cfg.attack_dir, suite=suite)
    return trained


def _attacked_already(cfg: ExperimentConfig, attack: str, threat: str) -> bool:
    """This (attack, threat) has results, crafted with the config's ensemble mode (results
    of another mode, or from before the mode was recorded, are measured again)."""
    from attack.reports.readback import recorded_ensemble_mode

    path = cfg.attack_dir / "suite" / f"{attack}-{threat}" / "results.json"
    if not path.is_file():
        return False
    return recorded_ensemble_mode(path) == cfg.attack.suite.ensemble


def run_study(config: Path, out: str | None, seeds: tuple[int, ...] = ()) -> Path:
    """Train, attack and report every variant (of every replicate seed); the report's path."""
    base, replicates = replicate_configs(config, out, seeds)  # the config's checks, before torch loads
    from attack.measure.core import SuiteRequest
    from attack.suite import check_suite

    study = base.study
    assert study is not None
    for s, cfgs in replicates.items():  # every suite setting of every variant, before any training
        for cfg in cfgs.values():
            check_suite(
                cfg, SuiteRequest(study.attacks, study.threats, (), (), replicate_dir(base, s) / "outsider")
            )
    ensure_writable_dir(base.output_dir, "study output folder (output_dir, or --out)")
    runs = {
        s: _run_replicate(base, s, cfgs, f"seed {s}, " if len(replicates) > 1 else "")
        for s, cfgs in replicates.items()
    }
    _check_one_split(replicates)
    if len(runs) == 1:
        ((seed, (results, records)),) = runs.items()
        report = _write_one(base, base.output_dir, seed, results, records)
    else:
        for s, (results, records) in runs.items():
            _write_one(base, base.output_dir / "seeds" / str(s), s, results, records)
        report = _write_replicates(base, runs)
    failed = [
        f"{n} (seed {s})" if len(runs) > 1 else n
        for s, (r, _) in runs.items()
        for n, v in r.items()
        if isinstance(v, str)
    ]
    print(
        f"\nstudy report: {report}"
        + (f" ({len(failed)} variant(s) failed: {', '.join(failed)})" if failed else "")
    )
    if failed:
        raise FedAttackError(f"study: variant(s) {', '.join(failed)} failed; see {report}")
    return report


Run = tuple["dict[str, VariantSummary | str]", "dict[tuple[int, str], VariantRecords]"]


def _run_replicate(base: ExperimentConfig, seed: int, cfgs: dict[str, ExperimentConfig], label: str) -> Run:
    """Every variant of one seed: trained and attacked unless done, read back, summarized
    (a variant that fails is recorded with its reason)."""
    from attack.reports.readback import read_variant
    from attack.reports.variants import summarize

    study = base.study
    assert study is not None
    results: dict[str, VariantSummary | str] = {}
    records: dict[tuple[int, str], VariantRecords] = {}
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        print(f"\n[study {label}{i}/{len(cfgs)}] variant {name}: {cfg.output_dir}", flush=True)
        try:
            run_variant(cfg, study.attacks, study.threats, replicate_dir(base, seed) / "outsider")
            records[seed, name] = read_variant(cfg.attack_dir, study.attacks, study.threats)
            results[name] = summarize(records[seed, name], study, cfg.attack.eps, cfg.seed)
        except FedAttackError as e:
            log.error("variant %s (seed %s) failed: %s", name, seed, e)
            print(f"[study] variant {name} FAILED: {e}", flush=True)
            results[name] = f"{type(e).__name__}: {e}"
    return results, records


def _check_one_split(replicates: dict[int, dict[str, ExperimentConfig]]) -> None:
    fingerprints = [
        json.loads(p.read_text())
        for cfgs in replicates.values()
        for c in cfgs.values()
        if (p := c.splits_dir / "fingerprint.json").exists()
    ]
    if len({json.dumps(f, sort_keys=True) for f in fingerprints}) > 1:
        raise FedAttackError("study: the variants' splits differ; they must share data and split")


def _meta(base: ExperimentConfig, seed: int) -> StudyMeta:
    from attack.reports.summary import StudyMeta

    study = base.study
    assert study is not None
    return StudyMeta(
        seed,
        base.attack.eps,
        study.attacks,
        study.threats,
        study.robust_attack,
        {v.name: v.overrides for v in study.variants},
    )


def _write_one(
    base: ExperimentConfig,
    out: Path,
    seed: int,
    results: dict[str, VariantSummary | str],
    records: dict[tuple[int, str], VariantRecords],
) -> Path:
    """One seed's study.md, study.json, study.png and tidy tables in `out`."""
    from attack.reports.variants import write_study

    study = base.study
    assert study is not None
    out.mkdir(parents=True, exist_ok=True)
    return write_study(out, results, study, base.attack.eps, _meta(base, seed), records)


def _write_replicates(base: ExperimentConfig, runs: dict[int, Run]) -> Path:
    """The report over seeds (study.md, study.json) and the tidy tables of every seed."""
    from attack.reports.replicates import write_replicates

    study = base.study
    assert study is not None
    return write_replicates(
        base.output_dir,
        {s: r for s, (r, _) in runs.items()},
        {k: v for _, rec in runs.values() for k, v in rec.items()},
        study,
        base.attack.eps,
        _meta(base, base.seed),
    )
