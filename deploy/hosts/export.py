"""Per-site data volumes for a deployment: each site gets a folder holding only its own
shard (images + manifest), the attack service only the held-out test sets.

`fedattack deploy prepare-data` runs this once (compose's data-init service): it uses the
datasets under the config's roots when they are there, or writes the synthetic twin
when none is, then splits and copies. Re-running is cheap: files already in place are kept.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.config.experiment import ExperimentConfig, load_config
from shared.data.manifest import (
    Manifest,
    load_manifest,
    public_manifest_path,
    site_manifest_path,
    test_manifest_path,
)
from shared.errors import DatasetError
from shared.io import atomic_path
from shared.prep.splits import make_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exported:
    name: str
    manifest: Path
    images: int
    copied: int


def dataset_present(root: Path) -> bool:
    return root.is_dir() and any(root.iterdir())


def resolve_data(config: Path, work: Path, synth_if_missing: bool) -> ExperimentConfig:
    """The config, with the dataset roots switched to a synthetic twin under `work` when no
    dataset is mounted. Some datasets present and some not is an error: no silent mix."""
    cfg = load_config(config, {"output_dir": str(work)})
    present = {name: dataset_present(ds.root) for name, ds in cfg.data.datasets.items()}
    if all(present.values()):
        print(
            f"using the mounted datasets: {', '.join(str(d.root) for d in cfg.data.datasets.values())}",
            flush=True,
        )
        return cfg
    if any(present.values()):
        missing = [str(cfg.data.datasets[n].root) for n, ok in present.items() if not ok]
        raise DatasetError(
            f"dataset root(s) {', '.join(missing)} empty or absent while others are "
            "mounted; mount every dataset of the config, or none for the synthetic twin"
        )
    if not synth_if_missing:
        raise DatasetError(
            f"no dataset under {', '.join(str(d.root) for d in cfg.data.datasets.values())}; "
            "mount the data or pass --synth-if-missing"
        )
    from shared.prep.synth.twin import synthesize

    synth = work / "synthetic"
    roots = {f"data.datasets.{name}.root": str(synth / name) for name in cfg.data.datasets}
    cfg = load_config(config, {"output_dir": str(work), **roots})
    done = synth / ".complete"
    if not done.exists():
        print(
            f"no dataset mounted: writing the synthetic twin ({cfg.synth.patients} patients per "
            f"dataset) to {synth}",
            flush=True,
        )
        synthesize(synth, cfg.synth.patients, cfg.synth.size, cfg.seed, cfg.synth.positive_rate)
        done.touch()
    return cfg


def export_manifest(manifest: Manifest, root: Path, manifest_path: Path, skip_missing: bool) -> Exported:
    """Copy the manifest's images under `root` (same relative paths) and write the manifest,
    last, pointing at `root`: relative to the manifest's folder when `root` is inside it, so
    the folder reads the same wherever a service mounts it."""
    copied = n = 0
    for samples in manifest.parts.values():
        for s in samples:
            src, dst = manifest.data_root / s.relpath, root / s.relpath
            n += 1
            if dst.exists() and src.exists() and dst.stat().st_size == src.stat().st_size:
                continue
            if not src.is_file():
                if skip_missing:
                    continue
                raise DatasetError(
                    f"{src}: listed in {manifest.name} but not found; restore it or set "
                    "data.skip_unreadable: true"
                )
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            copied += 1
    here = Path(manifest_path).parent
    recorded = root.relative_to(here) if root.is_relative_to(here) else root
    Manifest(
        manifest.name,
        manifest.dataset,
        manifest.kind,
        recorded,
        manifest.parts,
        manifest.skipped,
        manifest.partition,
    ).save(manifest_path)
    return Exported(manifest.name, manifest_path, n, copied)


def prepare_deployment_data(
    config: Path,
    work: Path,
    sites_dir: Path,
    attack_dir: Path,
    synth_if_missing: bool = True,
    server_dir: Path | None = None,
) -> list[Exported]:
    """Split, then write `sites_dir/<site>/site_<site>.json` + its images for every site and
    `attack_dir/test_<dataset>.json` + images for every test set (and
    `attack_dir/public_<dataset>.json` + images for the outsider's public split, if any).
    `server_dir` gets the public split alone, `public_<dataset>.json` + images: what a
    feddf ServerApp distils on, mounted where the run's splits folder is (the config's
    output_dir/splits), with no site's shard and no test set beside it."""
    cfg = resolve_data(config, work, synth_if_missing)
    make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir)
    skip = cfg.data.skip_unreadable
    out = []
    for site in cfg.data.sites:
        src = load_manifest(site_manifest_path(cfg.splits_dir, site))
        dest = Path(sites_dir) / site
        out.append(export_manifest(src, dest, site_manifest_path(dest, site), skip))
    for name in cfg.data.datasets:
        src = load_manifest(test_manifest_path(cfg.splits_dir, name))
        out.append(export_manifest(src, Path(attack_dir) / name, test_manifest_path(attack_dir, name), skip))
        public = public_manifest_path(cfg.splits_dir, name)
        if not public.is_file():  # no data.split.public_fraction
            continue
        # the outsider threat's own training data; a feddf server's distillation data
        for folder in (Path(attack_dir), *([Path(server_dir)] if server_dir else [])):
            dest = folder / f"public-{name}"
            out.append(export_manifest(load_manifest(public), dest, public_manifest_path(folder, name), skip))
    for e in out:
        print(f"{e.name}: {e.images} images ({e.copied} copied) -> {e.manifest}", flush=True)
    return out
