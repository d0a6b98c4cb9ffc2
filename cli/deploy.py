"""`fedattack deploy ...`: the networked deployment's commands (parsing and wiring only).

Why this module is long: it declares the arguments of ten subcommands (credentials,
app signing, the SuperLink and its Fleet proxy, sites, submission, the store), each
a few lines of wiring; splitting them would scatter one command line over files."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.errors import FedAttackError


def _site_name(value: str) -> str:
    """A site name as data.sites spells them (shared.config.data.SITE_NAME)."""
    from shared.config.data import SITE_NAME

    if not SITE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value[:40]!r} is not a site name "
            "(1-32 letters, digits, '_' or '-', starting with a letter or digit)"
        )
    return value


def _secure(args: argparse.Namespace, option: str, what: str) -> Path | None:
    """The folder or file of `option` (e.g. --credentials), or None with an explicit --insecure;
    exactly one of them is required. `what` says what the secure side gives."""
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    if args.insecure == bool(value):
        raise FedAttackError(f"pass exactly one of {option} ({what}) and --insecure")
    return None if args.insecure else Path(value)


def _trust(args: argparse.Namespace) -> Path | None:
    """--root-certificates CA, or None with an explicit --insecure; one of them is required."""
    return _secure(args, "--root-certificates", "CA, TLS")


def _deploy_credentials(args: argparse.Namespace) -> int:
    from deploy.hosts.credentials import make_credentials
    from deploy.hosts.server import LOOPBACK_NAMES

    sans = list(dict.fromkeys([*args.san, *LOOPBACK_NAMES]))
    opt = {
        k: Path(v) if v else None
        for k, v in (
            ("sites_dir", args.sites_dir),
            ("server_dir", args.server_dir),
            ("operator_dir", args.operator_dir),
        )
    }
    c = make_credentials(Path(args.out), sans, args.sites, args.force, **opt)
    print(f"CA certificate (give to every site and the attack host): {c.ca_cert}")
    print(f"server certificate for {', '.join(sans)}: {c.server_cert} (key {c.server_key})")
    print(f"attack host's client certificate (only to the attack host): {c.attack_cert} (key {c.attack_key})")
    for site, key in c.site_keys.items():
        print(f"site {site}: private key {key} (only to site {site}), public key {key}.pub (register)")
    assert c.signing_key is not None
    print(
        f"app-signing key (stays with the operator): {c.signing_key}; its public half for every site: "
        f"{c.signing_key.with_name('trusted-entities.yaml')}"
    )
    if args.sign_app:
        _sign(c.signing_key, Path(args.sign_app))
    return 0


def _sign(key: Path, out: Path) -> None:
    from deploy.flower.connection import app_dir
    from deploy.hosts.appsign import sign_app

    app = sign_app(app_dir(), key, out)
    print(
        f"signed {app.app_id}=={app.version} (FAB sha256 {app.sha256[:16]}..., "
        f"key {app.public_key_id}) into {out}"
    )


def _deploy_sign_app(args: argparse.Namespace) -> int:
    _sign(Path(args.key), Path(args.out))
    return 0


def _deploy_fleet_proxy(args: argparse.Namespace) -> int:
    from deploy.hosts.fleet_guard import FleetLimits
    from deploy.hosts.fleet_proxy import serve_fleet_proxy

    creds = _secure(args, "--credentials", "DIR, TLS")
    db = Path(args.superlink_database) if args.superlink_database else None
    limits = FleetLimits().with_pairs(args.fleet_limit)
    serve_fleet_proxy(args.host, args.port, args.upstream_port, creds, database=db, limits=limits)
    return 0


def _deploy_prepare_data(args: argparse.Namespace) -> int:
    from deploy.hosts.export import prepare_deployment_data

    prepare_deployment_data(
        Path(args.config),
        Path(args.work),
        Path(args.sites_dir),
        Path(args.attack_dir),
        args.synth_if_missing,
        Path(args.server_dir) if args.server_dir else None,
    )
    return 0


def _deploy_superlink(args: argparse.Namespace) -> int:
    from deploy.hosts.fleet_guard import FleetLimits
    from deploy.hosts.server import start_superlink

    credentials = _secure(args, "--credentials", "DIR, TLS + node auth")
    if credentials is not None and not args.app and not args.unsafe_open_control_api:
        raise FedAttackError(
            "refusing to serve Flower's Control API on the public port: pass --app DIR (the app "
            "signed by `deploy sign-app`) to lock the SuperLink down, or --unsafe-open-control-api "
            "to open it to anyone who reaches --port (trusted networks only)"
        )
    start_superlink(
        credentials,
        Path(args.state),
        args.host,
        args.port,
        args.control_port,
        Path(args.app) if args.app else None,
        FleetLimits().with_pairs(args.fleet_limit),
        open_control_api=args.unsafe_open_control_api,
    )
    return 0


def _deploy_register(args: argparse.Namespace) -> int:
    from deploy.hosts.server import register_keys

    if args.insecure:
        print("insecure SuperLink: SuperNode authentication is off, nothing to register")
        return 0
    if not args.root_certificates:
        raise FedAttackError("pass --root-certificates CA (or --insecure)")
    register_keys(args.superlink, Path(args.root_certificates), [Path(k) for k in args.public_key], args.wait)
    return 0


def _deploy_supernode(args: argparse.Namespace) -> int:
    from deploy.hosts.site import start_supernode

    ca = _trust(args)
    start_supernode(
        args.site,
        args.superlink,
        Path(args.data),
        ca,
        Path(args.key) if args.key else None,
        args.device,
        args.port,
        args.max_retries,
        Path(args.trusted_entities) if args.trusted_entities else None,
    )
    return 0


def _deploy_submit(args: argparse.Namespace) -> int:
    from deploy.hosts.server import submit
    from shared.config.experiment import load_config

    cfg = load_config(args.config, {"output_dir": args.out} if args.out else {})
    store = Path(args.store) if args.store else cfg.store_dir.absolute()
    submit(cfg, args.superlink, _trust(args), store, args.resume, args.wait, signed=args.signed_app)
    print(f"all runs finished; checkpoint store: {store}")
    return 0


def _deploy_serve_store(args: argparse.Namespace) -> int:
    from deploy.hosts.store_server import serve_store

    credentials = _secure(args, "--credentials", "DIR, HTTPS")
    serve_store(Path(args.store), args.host, args.port, credentials, args.public)
    return 0


def _deploy_compose(args: argparse.Namespace) -> int:
    from deploy.docker.sites import write_compose
    from shared.config.experiment import load_config

    if args.gpus < 0:
        raise FedAttackError(f"--gpus {args.gpus}: give the number of GPUs on the host (0: none)")
    config = Path(args.config)
    sites = load_config(config).data.sites
    out = write_compose(Path(args.template), sites, Path(args.out), config, args.gpus)
    gpu = f", one GPU each over {args.gpus}" if args.gpus else ""
    print(
        f"{out}: {len(sites)} site services ({', '.join(sites)}){gpu}; run: deploy/compose-study.sh -f {out}"
    )
    return 0


def _deploy_wheelhouse(args: argparse.Namespace) -> int:
    from deploy.docker.wheelhouse import DEFAULT_DIR, check_wheelhouse, make_wheelhouse

    out = Path(args.out) if args.out else DEFAULT_DIR
    if args.check:
        check_wheelhouse(out)
        print(f"wheelhouse {out}: complete")
        return 0
    wheels = make_wheelhouse(out)
    size = sum(w.stat().st_size for w in wheels) / 2**30
    print(f"wheelhouse {out}: {len(wheels)} wheels, {size:.1f} GiB, complete")
    return 0


def _fleet_limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fleet-limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Fleet proxy limit, e.g. header-timeout-s=10 or max-connections-per-address=32 "
        "(repeatable; names and defaults: docs/deployment.md, Load limits)",
    )


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """The `deploy` subcommand and its own subcommands."""
    dep = sub.add_parser("deploy", help="networked deployment: credentials, SuperLink, SuperNodes, runs")
    dsub = dep.add_subparsers(dest="deploy_command", required=True)

    c = dsub.add_parser("credentials", help="CA, server certificate and one key pair per site")
    c.add_argument("--out", required=True, help="folder for ca.crt, server.crt/key, site-X.key(.pub)")
    c.add_argument(
        "--san",
        action="append",
        required=True,
        help="a name or IP the SuperNodes dial (repeat); 127.0.0.1 and localhost are added",
    )
    c.add_argument("--sites", nargs="+", default=["A", "B", "C", "D"])
    c.add_argument(
        "--sites-dir",
        help="make each site's private key (and a CA copy) in "
        "SITES_DIR/<site>/ instead of --out; public keys still go to --out",
    )
    c.add_argument(
        "--server-dir", help="copy ca.crt, server.crt and server.key here (the SuperLink's folder)"
    )
    c.add_argument(
        "--operator-dir", help="copy ca.crt and the sites' public keys here (for `register` and `submit`)"
    )
    c.add_argument("--sign-app", metavar="DIR", help="also sign this project's Flower app into DIR")
    c.add_argument("--force", action="store_true", help="remake everything (re-register the keys!)")
    c.set_defaults(func=_deploy_credentials)

    g = dsub.add_parser("sign-app", help="sign the project's Flower app (sites run only signed apps)")
    g.add_argument("--key", required=True, help="the operator's app-signing.key (Ed25519)")
    g.add_argument("--out", required=True, help="folder for the signed FAB (the SuperLink's --app)")
    g.set_defaults(func=_deploy_sign_app)

    f = dsub.add_parser("fleet-proxy", help="publish only the SuperLink's Fleet API (what SuperNodes call)")
    f.add_argument("--credentials", help="folder with ca.crt, server.crt, server.key")
    f.add_argument("--insecure", action="store_true", help="plain HTTP: local experiments only")
    f.add_argument("--host", default="0.0.0.0")
    f.add_argument("--port", type=int, default=9093)
    f.add_argument("--upstream-port", type=int, default=9091, help="the SuperLink's port on 127.0.0.1")
    f.add_argument(
        "--superlink-database",
        help="the SuperLink's STATE/superlink.db (needed with --credentials): bodies are read only "
        "from requests signed by a key registered there",
    )
    _fleet_limit_option(f)
    f.set_defaults(func=_deploy_fleet_proxy)

    p = dsub.add_parser(
        "prepare-data",
        help="one folder per site with only its shard, and the "
        "test sets for the attack (the synthetic twin if no data is mounted)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--work", required=True, help="scratch folder (full splits, synthetic twin)")
    p.add_argument("--sites-dir", required=True, help="gets <site>/site_<site>.json + images")
    p.add_argument("--attack-dir", required=True, help="gets test_<dataset>.json + images")
    p.add_argument(
        "--server-dir",
        help="gets the public split alone, public_<dataset>.json + images (data.split.public_fraction): "
        "what a feddf ServerApp distils on; mount it as the run's splits folder on the SuperLink",
    )
    p.add_argument(
        "--synth-if-missing", action="store_true", help="write the synthetic twin when no dataset is mounted"
    )
    p.set_defaults(func=_deploy_prepare_data)

    s = dsub.add_parser("superlink", help="start the SuperLink (TLS, node auth, persistent state)")
    s.add_argument("--credentials", help="folder with ca.crt, server.crt, server.key")
    s.add_argument("--insecure", action="store_true", help="no TLS, no node auth: local experiments only")
    s.add_argument("--state", required=True, help="folder for the SuperLink's database")
    s.add_argument("--host", default="0.0.0.0", help="where the Fleet proxy listens (the sites dial it)")
    s.add_argument("--port", type=int, default=9093, help="the Fleet proxy's port")
    s.add_argument(
        "--control-port",
        type=int,
        default=9091,
        help="the SuperLink's own port, on 127.0.0.1 only: for the operator's register and submit",
    )
    s.add_argument(
        "--app",
        help="folder with the signed app (`deploy sign-app --out`): with --credentials, "
        "locks the SuperLink down (control API on loopback, only the Fleet API on --port); "
        "required with --credentials unless --unsafe-open-control-api",
    )
    s.add_argument(
        "--unsafe-open-control-api",
        action="store_true",
        help="with --credentials and no --app: one SuperLink port for every API, Flower's Control "
        "API included (anyone who reaches --port can register keys and submit apps): trusted networks only",
    )
    _fleet_limit_option(s)
    s.set_defaults(func=_deploy_superlink)

    r = dsub.add_parser("register", help="register the sites' public keys with the SuperLink")
    r.add_argument("--superlink", required=True, help="HOST:PORT")
    r.add_argument("--root-certificates", help="the CA certificate")
    r.add_argument("--insecure", action="store_true", help="nothing to do (no node auth)")
    r.add_argument("--public-key", nargs="+", default=[], help="site-X.key.pub files")
    r.add_argument("--wait", type=float, default=120, help="seconds to wait for the SuperLink")
    r.set_defaults(func=_deploy_register)

    n = dsub.add_parser("supernode", help="start one site's SuperNode")
    n.add_argument("--site", required=True, type=_site_name, help="a site of data.sites (A, B, C, D, ...)")
    n.add_argument("--superlink", required=True, help="HOST:PORT the SuperLink listens on")
    n.add_argument("--data", required=True, help="the site's folder (site_<site>.json + images)")
    n.add_argument("--root-certificates", help="the CA certificate")
    n.add_argument("--key", help="the site's private key (site-X.key, mode 600)")
    n.add_argument("--insecure", action="store_true", help="no TLS: local experiments only")
    n.add_argument("--device", default="", help="cuda, cuda:1, cpu (default: cuda if present)")
    n.add_argument("--port", type=int, default=9094, help="the SuperNode's local ClientAppIo port")
    n.add_argument(
        "--trusted-entities",
        help="lock the site down: run only apps signed by these keys (credentials' "
        "trusted-entities.yaml), SuperExec with a shared secret",
    )
    n.add_argument(
        "--max-retries",
        type=int,
        default=None,
        help="give up after this many failed connection attempts (default: keep trying)",
    )
    n.set_defaults(func=_deploy_supernode)

    u = dsub.add_parser("submit", help="submit one run per architecture and wait for them")
    u.add_argument("--config", required=True)
    u.add_argument("--superlink", required=True, help="HOST:PORT")
    u.add_argument("--root-certificates", help="the CA certificate")
    u.add_argument("--insecure", action="store_true")
    u.add_argument("--store", help="checkpoint folder on the SuperLink host (default: the config's)")
    u.add_argument("--out", help="output folder (overrides output_dir)")
    u.add_argument("--resume", action="store_true")
    u.add_argument(
        "--signed-app",
        action="store_true",
        help="name the signed app the locked-down SuperLink serves (superlink --app) instead of "
        "sending this checkout's app unsigned (sites with trusted entities refuse that)",
    )
    u.add_argument("--wait", type=float, default=120, help="seconds to wait for the SuperLink")
    u.set_defaults(func=_deploy_submit)

    v = dsub.add_parser(
        "serve-store",
        help="serve the checkpoint store (the manifest and its files only) to the attack host",
    )
    v.add_argument("--store", required=True)
    v.add_argument("--credentials", help="folder with ca.crt, server.crt, server.key (HTTPS)")
    v.add_argument("--insecure", action="store_true", help="plain HTTP (needs --public)")
    v.add_argument(
        "--public",
        action="store_true",
        help="serve without client certificates: to anyone who reaches the port (default: only "
        "to clients presenting a certificate from the deployment's CA, i.e. attack.crt)",
    )
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    v.add_argument("--port", type=int, default=8443)
    v.set_defaults(func=_deploy_serve_store)

    m = dsub.add_parser(
        "compose",
        help="a compose file for the sites the config names (any number), from docker-compose.yml",
    )
    m.add_argument(
        "--config", required=True, help="experiment YAML with container paths (as configs/compose.yaml)"
    )
    m.add_argument("--out", default="docker-compose.sites.yml", help="the compose file to write")
    m.add_argument("--template", default="docker-compose.yml", help="the four-site file it is made from")
    m.add_argument(
        "--gpus", type=int, default=0, help="GPUs on the host: one per site, round-robin (0: none)"
    )
    m.set_defaults(func=_deploy_compose)

    w = dsub.add_parser(
        "wheelhouse",
        help="every wheel the image needs, for `docker build` with no network (air-gapped hosts)",
    )
    w.add_argument(
        "--out", default=None, help="folder (default: deploy/docker/wheelhouse, where the build looks)"
    )
    w.add_argument("--check", action="store_true", help="only check that --out is complete")
    w.set_defaults(func=_deploy_wheelhouse)
