"""`fedattack attack`: check every setting, pull and verify the checkpoints, measure the
study's attack (FGSM, member threat) with clean performance and controls, then the attack
suite when asked; write the reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from attack.measure.clean import clean_performance
from attack.measure.core import AttackSet, Probe, Settings, SuiteRequest, Target, fit_mask
from attack.measure.shards import attack_devices
from attack.measure.testsets import attack_set, check_split, load_test_sets
from attack.measure.threats import member_sources
from attack.measure.transfer import measure
from attack.methods.registry import build_attack, check_attack_names
from attack.pull.download import MiB
from attack.pull.fetch import StoreSnapshot, fetch_state, read_manifest, tls_context, wait_for_complete
from attack.reports.provenance import provenance
from attack.reports.records import RunMeta, Skipped
from attack.reports.results import study_json
from attack.reports.study import write_outputs
from attack.reports.tables import Info
from attack.suite import check_suite, check_suite_data, run_suite
from shared.config.experiment import ExperimentConfig
from shared.errors import AttackError, CheckpointError
from shared.ml.models import model_from_state
from shared.store.checkpoint import nonfinite_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    targets: list[Target]
    hashes: dict[str, str]
    skipped: list[Skipped]


def load_models(snap: StoreSnapshot, cfg: ExperimentConfig, cache: Path, skip_bad: bool) -> Loaded:
    """Verify and load every model of the store; refuse (or, with skip_bad, skip) bad ones."""
    targets, hashes, skipped = [], {}, []
    for entry in snap.models:
        try:
            if entry.input.size != cfg.data.image_size or entry.input.channels != cfg.data.channels:
                raise CheckpointError(
                    f"{entry.name}: trained on {entry.input.size} px x {entry.input.channels} ch, "
                    f"the attack config uses {cfg.data.image_size} px x {cfg.data.channels} ch"
                )
            state = fetch_state(snap, entry, cache)
            broken = nonfinite_problem(state)
            if broken:
                raise CheckpointError(f"refusing {entry.name}: {broken}; the store holds a broken model")
            model = model_from_state(entry.arch, entry.input, state).eval()
            targets.append(Target(entry.name, entry.arch, entry.kind, entry.site, model))
            hashes[entry.name] = entry.sha256
        except CheckpointError as e:
            if not skip_bad:
                raise CheckpointError(f"{e} (pass --skip-bad to measure without it)") from None
            log.warning("skipping %s: %s", entry.name, e)
            skipped.append(Skipped(entry.name, str(e)))
    if not targets:
        raise AttackError("no usable model in the checkpoint store")
    return Loaded(targets, hashes, skipped)


def settings_for(cfg: ExperimentConfig, gpus: int | None = None) -> Settings:
    """The measurement's settings on this host's devices (`gpus` replaces the visible GPU
    count)."""
    devices = attack_devices(cfg.attack, gpus)
    # crafting and every decision in full float32: no TF32 on Ampere and later
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = torch.bfloat16 if cfg.attack.precision == "bfloat16" else torch.float32
    return Settings(
        cfg.attack.batch_size,
        devices[0],
        dtype,
        cfg.seed,
        cfg.attack.universal.fit_fraction,
        cfg.attack.control,
        devices=devices,
    )


def check_request(
    cfg: ExperimentConfig,
    suite: SuiteRequest | None,
    root_certificates: Path | None = None,
    client: tuple[Path, Path] | None = None,
) -> None:
    """Every setting that needs no data, before any folder is made or compute spent: the
    study's attack, the suite's attacks, threats and sweep, the devices (attack.devices) and
    the precision on them, the TLS files for an https:// store."""
    check_attack_names([cfg.attack.name])
    if suite is not None:
        check_suite(cfg, suite)
    attack_devices(cfg.attack)
    tls_context(root_certificates, *(client or (None, None)))


def check_fit_split(suite: SuiteRequest, cfg: ExperimentConfig, data: AttackSet) -> None:
    """Universal attacks need images to fit on: refuse before any model is loaded."""
    names = dict.fromkeys(suite.attacks + suite.sweep_attacks)
    universal = [a for a in names if build_attack(a, cfg.attack.eps, cfg.attack).universal]
    if universal and not bool(fit_mask(data.ids, cfg.attack.universal.fit_fraction, cfg.seed).any()):
        raise AttackError(
            f"{', '.join(universal)}: attack.universal.fit_fraction {cfg.attack.universal.fit_fraction} "
            f"of {len(data)} attack images leaves no image to fit the perturbation on; raise it or use "
            "more images"
        )


def snapshot(
    store: str,
    watch: bool,
    root_certificates: Path | None,
    client: tuple[Path, Path] | None = None,
    max_file_bytes: int = 512 * MiB,
) -> StoreSnapshot:
    context = tls_context(root_certificates, *(client or (None, None)))
    if watch:
        return wait_for_complete(store, context=context, max_file_bytes=max_file_bytes)
    snap = read_manifest(store, context, max_file_bytes=max_file_bytes)
    if not snap.manifest["complete"]:
        raise CheckpointError(
            f"{store}: the checkpoint store is incomplete (federation still running or failed); "
            "wait for it, or use --watch"
        )
    return snap


def run_attack(
    cfg: ExperimentConfig,
    store: str,
    out: Path,
    skip_bad: bool = False,
    watch: bool = False,
    progress: bool = True,
    root_certificates: Path | None = None,
    suite: SuiteRequest | None = None,
    client_certificate: tuple[Path, Path] | None = None,
) -> Path:
    """The whole job; returns the report path. `root_certificates`: the CA that an
    https:// store's certificate must chain to (default: the system's CAs);
    `client_certificate`: (certificate, key) the attack host presents to such a store."""
    check_request(cfg, suite, root_certificates, client_certificate)
    s = settings_for(cfg)
    test, digests = load_test_sets(cfg)
    data = attack_set(test, cfg.attack.max_images_per_dataset)
    if suite is not None:
        check_fit_split(suite, cfg, attack_set(test, cfg.attack.suite.max_images_per_dataset))
        check_suite_data(cfg, suite)
    max_file = cfg.attack.max_file_mib * MiB
    snap = snapshot(store, watch, root_certificates, client_certificate, max_file)
    split = check_split(snap.manifest.get("split"), digests, store)
    loaded = load_models(snap, cfg, out / ".checkpoints", skip_bad)
    torch.manual_seed(cfg.seed)
    log.info("attack set: %d pneumonia images; %d models", len(data), len(loaded.targets))
    info = {t.name: Info(t.name, t.arch, t.kind, t.site) for t in loaded.targets}
    probe = Probe(loaded.targets, data, s)
    m = measure(
        member_sources(loaded.targets),
        build_attack(cfg.attack.name, cfg.attack.eps, cfg.attack),
        probe,
        s,
        progress,
    )
    clean = {t.name: clean_performance(t.model, test, probe.settings(t.name)) for t in loaded.targets}
    by_set = {k: sum(1 for i in data.ids if i.startswith(k + "/")) for k in digests}
    meta = RunMeta(
        attack=m.attack,
        eps=m.eps,
        threat="member",
        seed=cfg.seed,
        store=store,
        n_images=len(data),
        n_images_by_set=", ".join(f"{n} from {k}" for k, n in by_set.items()),
        image_size=cfg.data.image_size,
        skipped=tuple(loaded.skipped),
        provenance=provenance(s, split),
    )
    results = study_json(m, info, clean, loaded.hashes, meta, cfg.seed)
    write_outputs(out, m, info, clean, results, meta, cfg.seed)
    cfg.dump(out / "config.yaml")
    if suite is not None:
        images = attack_set(test, cfg.attack.suite.max_images_per_dataset)
        main = m if images.ids == data.ids else None  # the suite measures on the same images
        if main is None:
            probe = Probe(loaded.targets, images, s)
        run_suite(cfg, suite, probe, loaded.targets, info, s, out / "suite", meta.provenance, progress, main)
    return out / "report.md"
