"""`fedattack`: the umbrella command line. Each subcommand only wires."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from shared.errors import FedAttackError
from shared.logs import setup_logging

log = logging.getLogger("fedattack")


def _data_synth(args: argparse.Namespace) -> int:
    from shared.data.synth import synthesize

    counts = synthesize(Path(args.out), args.patients, args.size, args.seed,
                        args.positive_rate, args.nih_layout)
    print(f"wrote {counts['nih']} NIH images to {Path(args.out) / 'nih'} and "
          f"{counts['rsna']} RSNA images to {Path(args.out) / 'rsna'}")
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from shared.config import load_config
    from shared.data.splits import make_splits

    cfg = load_config(args.config)
    for name, path in sorted(make_splits(cfg.data, cfg.seed, cfg.splits_dir).items()):
        print(f"{name}: {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from shared.config import load_config
    from shared.data.check import check_data, format_reports

    cfg = load_config(args.config)
    reports = check_data(cfg)
    print(format_reports(reports))
    bad = [r for r in reports if r.unreadable]
    for r in bad:
        print(f"{r.manifest}/{r.part}: {r.unreadable} unreadable, listed in {r.unreadable_list}")
    if bad and not cfg.data.skip_unreadable:
        print("unreadable images found: replace them, or set data.skip_unreadable: true",
              file=sys.stderr)
        return 1
    return 0


def _federate(args: argparse.Namespace) -> int:
    from server.launcher import federate
    from shared.config import load_config

    cfg = load_config(args.config, _overrides(args))
    store = federate(cfg, resume=args.resume)
    print(f"checkpoint store complete: {store / 'manifest.json'}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from attack.service import run_attack
    from shared.config import load_config

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else cfg.attack_dir
    ca = Path(args.root_certificates) if args.root_certificates else None
    report = run_attack(cfg, args.checkpoints or str(cfg.store_dir), out, args.skip_bad, args.watch,
                        root_certificates=ca)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from shared.demo import run_demo

    report = run_demo(Path(args.config), Path(args.out) if args.out else None, args.patients,
                      args.size)
    print(f"\ndemo finished. report: {report}")
    return 0


def _trust(args: argparse.Namespace) -> Path | None:
    """--root-certificates CA, or None with an explicit --insecure; one of them is required."""
    if args.insecure == bool(args.root_certificates):
        raise FedAttackError("pass exactly one of --root-certificates CA (TLS) and --insecure")
    return None if args.insecure else Path(args.root_certificates)


def _deploy_credentials(args: argparse.Namespace) -> int:
    from server.deploy import LOOPBACK_NAMES
    from shared.tls import make_credentials

    sans = list(dict.fromkeys([*args.san, *LOOPBACK_NAMES]))
    c = make_credentials(Path(args.out), sans, args.sites, args.force,
                         Path(args.sites_dir) if args.sites_dir else None)
    print(f"CA certificate (give to every site and the attack host): {c.ca_cert}")
    print(f"server certificate for {', '.join(sans)}: {c.server_cert} (key {c.server_key})")
    for site, key in c.site_keys.items():
        print(f"site {site}: private key {key} (only to site {site}), public key {key}.pub (register)")
    return 0


def _deploy_prepare_data(args: argparse.Namespace) -> int:
    from shared.data.export import prepare_deployment_data

    prepare_deployment_data(Path(args.config), Path(args.work), Path(args.sites_dir),
                            Path(args.attack_dir), args.synth_if_missing)
    return 0


def _deploy_superlink(args: argparse.Namespace) -> int:
    from server.deploy import start_superlink

    if args.insecure == bool(args.credentials):
        raise FedAttackError("pass exactly one of --credentials DIR (TLS + node auth) and --insecure")
    start_superlink(None if args.insecure else Path(args.credentials), Path(args.state), args.host,
                    args.port)
    return 0


def _deploy_register(args: argparse.Namespace) -> int:
    from server.deploy import register_keys

    if args.insecure:
        print("insecure SuperLink: SuperNode authentication is off, nothing to register")
        return 0
    if not args.root_certificates:
        raise FedAttackError("pass --root-certificates CA (or --insecure)")
    register_keys(args.superlink, Path(args.root_certificates), [Path(k) for k in args.public_key],
                  args.wait)
    return 0


def _deploy_supernode(args: argparse.Namespace) -> int:
    from clients.deploy import start_supernode

    ca = _trust(args)
    start_supernode(args.site, args.superlink, Path(args.data), ca,
                    Path(args.key) if args.key else None, args.device, args.port, args.max_retries)
    return 0


def _deploy_submit(args: argparse.Namespace) -> int:
    from server.deploy import submit
    from shared.config import load_config

    cfg = load_config(args.config, _overrides(args))
    store = Path(args.store) if args.store else cfg.store_dir.absolute()
    submit(cfg, args.superlink, _trust(args), store, args.resume, args.wait)
    print(f"all runs finished; checkpoint store: {store}")
    return 0


def _deploy_serve_store(args: argparse.Namespace) -> int:
    from server.deploy import serve_store

    if args.insecure == bool(args.credentials):
        raise FedAttackError("pass exactly one of --credentials DIR (HTTPS) and --insecure (HTTP)")
    serve_store(Path(args.store), args.host, args.port, None if args.insecure else Path(args.credentials))
    return 0


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    dep = sub.add_parser("deploy", help="networked deployment: credentials, SuperLink, SuperNodes, runs")
    dsub = dep.add_subparsers(dest="deploy_command", required=True)

    c = dsub.add_parser("credentials", help="CA, server certificate and one key pair per site")
    c.add_argument("--out", required=True, help="folder for ca.crt, server.crt/key, site-X.key(.pub)")
    c.add_argument("--san", action="append", required=True,
                   help="a name or IP the SuperNodes dial (repeat); 127.0.0.1 and localhost are added")
    c.add_argument("--sites", nargs="+", default=["A", "B", "C", "D"])
    c.add_argument("--sites-dir", help="make each site's private key (and a CA copy) in "
                   "SITES_DIR/<site>/ instead of --out; public keys still go to --out")
    c.add_argument("--force", action="store_true", help="remake everything (re-register the keys!)")
    c.set_defaults(func=_deploy_credentials)

    p = dsub.add_parser("prepare-data", help="one folder per site with only its shard, and the "
                        "test sets for the attack (the synthetic twin if no data is mounted)")
    p.add_argument("--config", required=True)
    p.add_argument("--work", required=True, help="scratch folder (full splits, synthetic twin)")
    p.add_argument("--sites-dir", required=True, help="gets <site>/site_<site>.json + images")
    p.add_argument("--attack-dir", required=True, help="gets test_<dataset>.json + images")
    p.add_argument("--synth-if-missing", action="store_true",
                   help="write the synthetic twin when no dataset is mounted")
    p.set_defaults(func=_deploy_prepare_data)

    s = dsub.add_parser("superlink", help="start the SuperLink (TLS, node auth, persistent state)")
    s.add_argument("--credentials", help="folder with ca.crt, server.crt, server.key")
    s.add_argument("--insecure", action="store_true", help="no TLS, no node auth: local experiments only")
    s.add_argument("--state", required=True, help="folder for the SuperLink's database")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=9093)
    s.set_defaults(func=_deploy_superlink)

    r = dsub.add_parser("register", help="register the sites' public keys with the SuperLink")
    r.add_argument("--superlink", required=True, help="HOST:PORT")
    r.add_argument("--root-certificates", help="the CA certificate")
    r.add_argument("--insecure", action="store_true", help="nothing to do (no node auth)")
    r.add_argument("--public-key", nargs="+", default=[], help="site-X.key.pub files")
    r.add_argument("--wait", type=float, default=120, help="seconds to wait for the SuperLink")
    r.set_defaults(func=_deploy_register)

    n = dsub.add_parser("supernode", help="start one site's SuperNode")
    n.add_argument("--site", required=True, choices=["A", "B", "C", "D"])
    n.add_argument("--superlink", required=True, help="HOST:PORT the SuperLink listens on")
    n.add_argument("--data", required=True, help="the site's folder (site_<site>.json + images)")
    n.add_argument("--root-certificates", help="the CA certificate")
    n.add_argument("--key", help="the site's private key (site-X.key, mode 600)")
    n.add_argument("--insecure", action="store_true", help="no TLS: local experiments only")
    n.add_argument("--device", default="", help="cuda, cuda:1, cpu (default: cuda if present)")
    n.add_argument("--port", type=int, default=9094, help="the SuperNode's local ClientAppIo port")
    n.add_argument("--max-retries", type=int, default=None,
                   help="give up after this many failed connection attempts (default: keep trying)")
    n.set_defaults(func=_deploy_supernode)

    u = dsub.add_parser("submit", help="submit one run per architecture and wait for them")
    u.add_argument("--config", required=True)
    u.add_argument("--superlink", required=True, help="HOST:PORT")
    u.add_argument("--root-certificates", help="the CA certificate")
    u.add_argument("--insecure", action="store_true")
    u.add_argument("--store", help="checkpoint folder on the SuperLink host (default: the config's)")
    u.add_argument("--out", help="output folder (overrides output_dir)")
    u.add_argument("--resume", action="store_true")
    u.add_argument("--wait", type=float, default=120, help="seconds to wait for the SuperLink")
    u.set_defaults(func=_deploy_submit)

    v = dsub.add_parser("serve-store", help="serve the checkpoint store to the attack host")
    v.add_argument("--store", required=True)
    v.add_argument("--credentials", help="folder with ca.crt, server.crt, server.key (HTTPS)")
    v.add_argument("--insecure", action="store_true", help="plain HTTP")
    v.add_argument("--host", default="0.0.0.0")
    v.add_argument("--port", type=int, default=8443)
    v.set_defaults(func=_deploy_serve_store)


def _overrides(args: argparse.Namespace) -> dict:
    return {"output_dir": args.out} if getattr(args, "out", None) else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedattack", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="synthesize, split and check datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic twin in the real layouts")
    s.add_argument("--out", required=True, help="output folder (gets nih/ and rsna/)")
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
    f.add_argument("--resume", action="store_true",
                   help="continue from the last complete round stored for each architecture")
    f.set_defaults(func=_federate)

    a = sub.add_parser("attack", help="FGSM transfer across every model of a checkpoint store")
    a.add_argument("--config", required=True, help="experiment YAML (attack settings, test data)")
    a.add_argument("--checkpoints", help="store: a directory, http(s):// or fsspec URL "
                   "(default: the config's output_dir/checkpoints)")
    a.add_argument("--out", help="output folder (default: output_dir/attack)")
    a.add_argument("--skip-bad", action="store_true",
                   help="skip models that fail verification (recorded in the results)")
    a.add_argument("--root-certificates", help="CA certificate an https:// store must chain to")
    a.add_argument("--watch", action="store_true",
                   help="service mode: wait until the store is complete, then run")
    a.set_defaults(func=_attack)

    _add_deploy(sub)

    d = sub.add_parser("demo", help="everything on synthetic data: synth, federate, attack, report")
    d.add_argument("--config", default="configs/demo.yaml")
    d.add_argument("--out", help="output folder (overrides output_dir)")
    d.add_argument("--patients", type=int, default=None, help="synthetic patients per dataset")
    d.add_argument("--size", type=int, default=None, help="synthetic image side in pixels")
    d.set_defaults(func=_demo)
    return p


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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
