"""`fedattack`: the umbrella command line. Each subcommand only wires."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cli.deploy import add_deploy_commands
from shared.errors import FedAttackError
from shared.io import DISK_FULL, disk_full, ensure_writable_dir
from shared.logs import setup_logging

log = logging.getLogger("fedattack")


def _data_synth(args: argparse.Namespace) -> int:
    from shared.prep.synth.kinds import check_kinds, synthesize_kinds

    kinds = _csv(args.kind, "--kind")
    check_kinds(kinds)
    ensure_writable_dir(Path(args.out), "output folder (--out)")
    counts = synthesize_kinds(
        Path(args.out), kinds, args.patients, args.size, args.seed, args.positive_rate, args.nih_layout
    )
    for kind, n in counts.items():
        print(f"wrote {n} {kind} images to {Path(args.out) / kind}")
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from shared.config.experiment import load_config
    from shared.prep.splits import make_splits

    cfg = load_config(args.config)
    ensure_writable_dir(cfg.output_dir, OUTPUT_DIR)
    for name, path in sorted(make_splits(cfg.data, cfg.splitting_seed, cfg.splits_dir).items()):
        print(f"{name}: {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from shared.config.experiment import load_config
    from shared.prep.check import check_data, format_overlap, format_reports

    cfg = load_config(args.config)
    ensure_writable_dir(cfg.output_dir, OUTPUT_DIR)
    reports = check_data(cfg)
    print(format_reports(reports))
    print(format_overlap(cfg))
    bad = [r for r in reports if r.unreadable]
    for r in bad:
        print(f"{r.manifest}/{r.part}: {r.unreadable} unreadable, listed in {r.unreadable_list}")
    if bad and not cfg.data.skip_unreadable:
        print("unreadable images found: replace them, or set data.skip_unreadable: true", file=sys.stderr)
        return 1
    return 0


def _federate(args: argparse.Namespace) -> int:
    from deploy.local import federate
    from shared.config.experiment import load_config

    cfg = load_config(args.config, overrides(args))
    ensure_writable_dir(cfg.output_dir, OUTPUT_DIR)
    store = federate(cfg, resume=args.resume)
    print(f"checkpoint store complete: {store / 'manifest.json'}")
    return 0


def _csv(text: str, flag: str, kind: Callable[[str], Any] = str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    what = "names" if kind is str else "numbers"
    if not items:
        raise FedAttackError(f"{flag} {text!r}: names nothing; expected a comma-separated list of {what}")
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise FedAttackError(f"{flag} {text!r}: expected a comma-separated list of {what}") from None


def _eps(text: str) -> float:
    """One --eps item: a number or k/255 (checked against the config's bounds later)."""
    from shared.config.attack import Eps

    if "/" not in text:
        return float(text)
    try:
        return Eps.parse_config_value(text)
    except ValueError as e:
        raise FedAttackError(f"--eps {text!r}: {e}") from None


def suite_overrides(args: argparse.Namespace) -> dict:
    """--attack/--threat/--eps as config overrides (validated with the config's own keys)."""
    o: dict = {}
    if args.attack is not None:
        o["attack.suite.attacks"] = o["attack.suite.sweep_attacks"] = _csv(args.attack, "--attack")
    if args.threat is not None:
        o["attack.suite.threats"] = _csv(args.threat, "--threat")
    if args.eps is not None:
        o["attack.suite.sweep_eps"] = _csv(args.eps, "--eps", _eps)
    return o


@contextlib.contextmanager
def _fresh_dir(path: Path, what: str) -> Iterator[Path]:
    """ensure_writable_dir, and on any failure the folders it made removed again while they
    are still empty: a refusal leaves no empty output folder behind."""
    made = [p for p in (path, *path.parents) if not p.exists()]
    ensure_writable_dir(path, what)
    try:
        yield path
    except BaseException:
        for p in made:  # the deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _attack(args: argparse.Namespace) -> int:
    from shared.config.experiment import load_config

    extra = suite_overrides(args)
    cfg = load_config(args.config, extra)  # a bad config is refused before torch loads
    from attack.measure.core import SuiteRequest
    from attack.service import check_request, run_attack

    out = Path(args.out) if args.out else cfg.attack_dir
    ca = Path(args.root_certificates) if args.root_certificates else None
    if bool(args.client_cert) != bool(args.client_key):
        raise FedAttackError(
            "pass both --client-cert and --client-key (attack.crt and attack.key), or neither"
        )
    client = (Path(args.client_cert), Path(args.client_key)) if args.client_cert else None
    suite = SuiteRequest.from_config(cfg) if (args.suite or extra) else None
    check_request(cfg, suite, ca, client)  # before any folder is made
    with _fresh_dir(out, "attack's output folder (--out)"):
        report = run_attack(
            cfg,
            args.checkpoints or str(cfg.store_dir),
            out,
            args.skip_bad,
            args.watch,
            root_certificates=ca,
            suite=suite,
            client_certificate=client,
        )
    print(report.read_text())
    print(f"report: {report}")
    if suite is not None:
        print(f"suite report: {out / 'suite' / 'suite.md'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from shared.config.experiment import load_config

    ensure_writable_dir(Path(args.out) if args.out else load_config(args.config).output_dir, OUTPUT_DIR)
    from pipeline.demo import run_demo  # after the config's checks: torch loads here

    report = run_demo(
        Path(args.config), Path(args.out) if args.out else None, args.patients, args.size, args.seed
    )
    print(f"\ndemo finished. report: {report}")
    return 0


OUTPUT_DIR = "output folder (output_dir, or --out)"


def overrides(args: argparse.Namespace) -> dict:
    """--out as a config override of output_dir."""
    return {"output_dir": args.out} if getattr(args, "out", None) else {}


def _study(args: argparse.Namespace) -> int:
    from pipeline.study import run_study

    seeds = tuple(_csv(args.seeds, "--seeds", int)) if args.seeds is not None else ()
    report = run_study(Path(args.config), args.out, seeds)
    print(report.read_text())
    return 0


def add_study_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "study", help="train one federation per variant (defenses) and compare them under attack"
    )
    s.add_argument("--config", required=True, help="experiment YAML with a study section")
    s.add_argument("--out", help="output folder (overrides output_dir)")
    s.add_argument(
        "--seeds",
        help="replicates: one federation per seed and variant on the config's split, e.g. 7,8,9 "
        "(overrides study.seeds)",
    )
    s.set_defaults(func=_study)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedattack", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthesize, split and check datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic twin in the real layouts")
    s.add_argument("--out", required=True, help="output folder (gets one folder per kind: nih/, rsna/, ...)")
    s.add_argument(
        "--kind",
        default="nih,rsna",
        help="layouts to write, comma-separated: nih, rsna, chexpert, mimic, padchest, vindr",
    )
    s.add_argument("--patients", type=int, default=400, help="patients per dataset")
    s.add_argument("--size", type=int, default=256, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--positive-rate", type=float, default=0.35)
    s.add_argument("--nih-layout", choices=("flat", "kaggle"), default="flat")
    s.set_defaults(func=_data_synth)
    for name, fn, text in (
        ("split", _data_split, "write the site and test manifests"),
        ("check", _data_check, "validate the datasets and print a table per site and split"),
    ):
        c = dsub.add_parser(name, help=text)
        c.add_argument("--config", required=True, help="experiment YAML")
        c.set_defaults(func=fn)

    f = sub.add_parser("federate", help="run the federation locally: SuperLink + one SuperNode per site")
    f.add_argument("--config", required=True, help="experiment YAML")
    f.add_argument("--out", help="output folder (overrides output_dir)")
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last complete round stored for each architecture",
    )
    f.set_defaults(func=_federate)

    a = sub.add_parser(
        "attack", help="the study's FGSM transfer across every model of a store, and the suite"
    )
    a.add_argument("--config", required=True, help="experiment YAML (attack settings, test data)")
    a.add_argument(
        "--checkpoints",
        help="store: a directory, http(s):// or fsspec URL (default: the config's output_dir/checkpoints)",
    )
    a.add_argument("--out", help="output folder (default: output_dir/attack)")
    a.add_argument(
        "--skip-bad", action="store_true", help="skip models that fail verification (recorded in the results)"
    )
    a.add_argument("--root-certificates", help="CA certificate an https:// store must chain to")
    a.add_argument(
        "--client-cert", help="the attack host's client certificate for an https:// store (attack.crt)"
    )
    a.add_argument("--client-key", help="its private key (attack.key)")
    a.add_argument(
        "--watch", action="store_true", help="service mode: wait until the store is complete, then run"
    )
    a.add_argument(
        "--suite",
        action="store_true",
        help="also run the attack suite (attack.suite: every attack x threat model, eps sweeps)",
    )
    a.add_argument("--attack", help="suite attacks, e.g. pgd,midi (implies --suite)")
    a.add_argument("--threat", help="suite threat models: member,insider,outsider (implies --suite)")
    a.add_argument("--eps", help="suite eps sweep, e.g. 0.01,0.02 or 2/255,4/255 (implies --suite)")
    a.set_defaults(func=_attack)

    add_deploy_commands(sub)
    add_study_command(sub)

    d = sub.add_parser("demo", help="everything on synthetic data: synth, federate, attack, report")
    d.add_argument("--config", default="configs/demo.yaml")
    d.add_argument("--out", help="output folder (overrides output_dir)")
    d.add_argument("--patients", type=int, default=None, help="synthetic patients per dataset")
    d.add_argument("--size", type=int, default=None, help="synthetic image side in pixels")
    d.add_argument("--seed", type=int, default=None, help="experiment seed (also draws the synthetic twin)")
    d.set_defaults(func=_demo)

    w = sub.add_parser("power", help="attacked images per cell that an attack-against-noise difference needs")
    w.add_argument("--effect", type=float, required=True, help="the difference to detect (0.05: 5 points)")
    w.add_argument("--control", type=float, default=0.05, help="the control's rate (default 0.05)")
    w.add_argument("--power", type=float, default=0.8, help="the power wanted (default 0.8)")
    w.add_argument("--alpha", type=float, default=0.05, help="two-sided level (default 0.05)")
    w.set_defaults(func=_power)
    return p


def _power(args: argparse.Namespace) -> int:
    from attack.reports.power import images_needed

    if not (0 < args.alpha < 1 and 0 < args.power < 1):
        raise FedAttackError(f"--alpha {args.alpha} / --power {args.power}: each must be in (0, 1)")
    try:
        n = images_needed(args.effect, args.control, args.alpha, args.power)
    except ValueError as e:
        raise FedAttackError(f"--effect/--control: {e}") from None
    print(
        f"{n} attacked images per cell detect {args.control:.3g} -> {args.control + args.effect:.3g} "
        f"(+{100 * args.effect:.1f} points) with power {args.power:g} at alpha {args.alpha:g} "
        "(independent-proportions bound; a cell counts the images its target got right before, "
        "so a test set needs about n / (pneumonia share x sensitivity) images)"
    )
    return 0


_OS_HINTS = {
    errno.EACCES: "this user (uid {uid}) may not use it: check its owner and mode (in a container: the "
    "volume or tmpfs mounted there)",
    errno.EPERM: "this user (uid {uid}) may not use it: check its owner and mode",
    errno.EROFS: "it is on a read-only filesystem: write under a mounted volume instead",
    errno.ENOENT: "it does not exist: check the path",
}


def os_error(e: OSError) -> str:
    """`path: reason: what to do` for an OSError that carries a file name."""
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
    hint = _OS_HINTS.get(e.errno or 0, "")
    return f"{where}: {e.strerror or e}" + (f"; {hint.format(uid=os.getuid())}" if hint else "")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `with` blocks: children get stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except FedAttackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file operation the typed errors do not wrap: one line naming it
        if e.errno in DISK_FULL:
            print(f"error: {disk_full(e)}", file=sys.stderr)
            return 2
        if e.filename is None:
            raise
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
