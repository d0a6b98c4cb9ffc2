"""`fedattack study`: one federation per variant of the config (baseline, each defense),
on the same data, splits and seed, each attacked by the same attacks and threat models on
the same held-out images; one report compares them (attack.reports.variants).

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
    from attack.reports.summary import VariantSummary

log = logging.getLogger(__name__)


def variant_configs(config: Path, out: str | None) -> tuple[ExperimentConfig, dict[str, ExperimentConfig]]:
    """The base config and every variant's, all validated before anything is trained."""
    base = load_config(config, {"output_dir": out} if out else {})
    if base.study is None:
        raise ConfigError(
            f"{config}: no 'study' section; add study.variants (see configs/study-defenses.yaml)"
        )
    out_dir = str(base.output_dir)
    cfgs = {}
    for v in base.study.variants:
        try:
            cfgs[v.name] = load_config(
                config, {**v.overrides, "output_dir": f"{out_dir}/variants/{v.name}", "study": None}
            )
        except ConfigError as e:
            raise ConfigError(f"study variant {v.name!r}: {e}") from None
    return base, cfgs


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


def run_study(config: Path, out: str | None) -> Path:
    from attack.measure.core import SuiteRequest
    from attack.reports.summary import StudyMeta
    from attack.reports.variants import variant_summary, write_study
    from attack.suite import check_suite

    base, cfgs = variant_configs(config, out)
    study = base.study
    assert study is not None
    for cfg in cfgs.values():  # every suite setting of every variant, before any training
        check_suite(cfg, SuiteRequest(study.attacks, study.threats, (), (), base.output_dir / "outsider"))
    ensure_writable_dir(base.output_dir, "study output folder (output_dir, or --out)")
    results: dict[str, VariantSummary | str] = {}
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        print(f"\n[study {i}/{len(cfgs)}] variant {name}: {cfg.output_dir}", flush=True)
        try:
            run_variant(cfg, study.attacks, study.threats, base.output_dir / "outsider")
            results[name] = variant_summary(cfg.attack_dir, study, cfg.attack.eps, cfg.seed)
        except FedAttackError as e:
            log.error("variant %s failed: %s", name, e)
            print(f"[study] variant {name} FAILED: {e}", flush=True)
            results[name] = f"{type(e).__name__}: {e}"
    fingerprints = {
        n: json.loads(p.read_text()) if (p := c.splits_dir / "fingerprint.json").exists() else None
        for n, c in cfgs.items()
    }
    if len({json.dumps(f, sort_keys=True) for f in fingerprints.values() if f is not None}) > 1:
        raise FedAttackError("study: the variants' splits differ; they must share data and seed")
    meta = StudyMeta(
        base.seed,
        base.attack.eps,
        study.attacks,
        study.threats,
        study.robust_attack,
        {v.name: v.overrides for v in study.variants},
    )
    report = write_study(base.output_dir, results, study, base.attack.eps, meta)
    failed = [n for n, r in results.items() if isinstance(r, str)]
    print(
        f"\nstudy report: {report}"
        + (f" ({len(failed)} variant(s) failed: {', '.join(failed)})" if failed else "")
    )
    if failed:
        raise FedAttackError(f"study: variant(s) {', '.join(failed)} failed; see {report}")
    return report
