"""The ClientApp's cold start: what one Flower message costs before any training.

Flower 1.42 starts a fresh `flwr-clientapp` process for every message, which imports
the ClientApp, loads it and opens the site's data before training starts. Every phase
below runs in fresh subprocesses (`python -c`, the checkout as cwd and PYTHONPATH, so a
second checkout can be timed with this venv), repeated N times, the checkouts and phases
interleaved (the machine is noisy); the median of each, wall and CPU seconds (user +
system, the process's and the children it waited for):

  python        the bare interpreter (`python -c pass`): the floor of any process
  import        `import clients.app`: the ClientApp module and its import closure; and
                the whole process that does only that, start to exit
  flwr          flwr-clientapp's own imports (the console script's module, its runtime
                loop and the app loader), before it loads the app
  load          then flwr.supercore.object_ref.load_app("clients.app:app", ...), as
                flwr-clientapp loads the app from the installed FAB (import included)
  data          after the import: the node and run configs parsed, the site's manifest
                loaded and checked against the split's fingerprint, the warm cache of its
                train and val parts opened (clients.site.site_data)
  message       a whole train message in one process (ClientApp(message, context), the
                demo config, one local epoch), process start to exit, minus the training
                (clients.site's train_epochs, timed around) and minus building the message
                (torch.load of the initial weights, packed: flwr-clientapp pulls it instead);
                "handler": the handler's own work beyond training (model build, weights
                unpacked, BatchNorm statistics, validation before and after, reply)

The data: the synthetic twin (shared.prep) split as the demo config splits it, in a
temporary folder, made once with this checkout's code; each checkout warms its own cache
of it first. Before/after a change: time the old commit's worktree beside this one,

    git worktree add --detach /tmp/before <commit>
    python -m benchmarks.clientapp_start --checkout /tmp/before --checkout . [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("python", "import", "load", "data", "message")
ROWS = (
    ("python", "interpreter (python -c pass), process"),
    ("import", "import clients.app"),
    ("import-process", "  the same, process start to exit"),
    ("flwr", "flwr-clientapp's own imports"),
    ("load", "load_app('clients.app:app') after them"),
    ("data", "data open (configs, manifest, warm cache)"),
    ("message", "train message minus training, process"),
    ("handler", "  of it, the handler beyond training"),
    ("training", "  (its training, not counted)"),
)
TAG = "CLIENTAPP-START "

# Runs in the child (`python -c CHILD phase json`), against the checkout on its PYTHONPATH.
# Module paths moved in the restructure: each name is looked up under its new, then its old path.
CHILD = r"""
import importlib, json, sys, time

NAMES = {
    "load_config": ("shared.config.experiment", "shared.config"),
    "run_settings_for": ("shared.config.run", "shared.runconfig"),
    "RunSettings": ("shared.config.run", "shared.runconfig"),
    "NodeConfig": ("shared.config.node", "shared.nodeconfig"),
    "split_fingerprint": ("shared.data.fingerprint",),
    "build_model": ("shared.ml.models", "shared.models"),
    "to_record": ("shared.ml.wire", "shared.packing"),
    "site_data": ("clients.site",),
}


def name(key):
    for mod in NAMES[key]:
        try:
            return getattr(importlib.import_module(mod), key)
        except (ImportError, AttributeError):
            continue
    raise SystemExit(f"{key} not found in {NAMES[key]}")


def now():
    return time.perf_counter(), time.process_time()


def mark(marks, key, start):
    wall, cpu = now()
    marks[key] = (wall - start[0], cpu - start[1])
    return wall, cpu


def setup(a):
    from pathlib import Path
    import torch

    cfg = name("load_config")(a["config"], a["overrides"])
    split = name("split_fingerprint")(cfg.splits_dir)
    rc = name("run_settings_for")(cfg, a["arch"], Path(a["store"]), False, "bench", split).to_run_config()
    run = name("RunSettings").from_run_config(dict(rc))
    node = name("NodeConfig").from_flower(a["nc"])
    for part in ("train", "val"):
        name("site_data")(node, run, part)  # builds or checks this checkout's cache
    model = name("build_model")(run.arch, run.image_size, run.channels, net_size=run.net_size)
    torch.save(model.state_dict(), a["state"])
    return {"rc": rc}


def phase_import(a, marks):
    t = now()
    import clients.app  # noqa: F401

    mark(marks, "import", t)


def phase_load(a, marks):
    t = now()
    import flwr.supernode.cli  # noqa: F401  (flwr-clientapp's console script)
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn  # noqa: F401
    from flwr.supercore.object_ref import load_app

    t = mark(marks, "flwr", t)
    load_app("clients.app:app", LoadClientAppError, a["checkout"])
    mark(marks, "load", t)


def phase_data(a, marks):
    t = now()
    import clients.app  # noqa: F401

    mark(marks, "import", t)
    node_config, run_settings, site_data = name("NodeConfig"), name("RunSettings"), name("site_data")
    t = now()
    node = node_config.from_flower(dict(a["nc"]))
    run = run_settings.from_run_config(dict(a["rc"]))
    parts = [site_data(node, run, part) for part in ("train", "val")]
    mark(marks, "data", t)
    marks["images"] = (float(sum(len(p) for p in parts)), 0.0)


def phase_message(a, marks):
    t = now()
    import clients.app

    t = mark(marks, "import", t)
    import torch
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1  # flwr-clientapp sets them

    arrays = name("to_record")(torch.load(a["state"], weights_only=True))
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"phase": "fedavg", "server-round": 1})})
    msg = Message(content, dst_node_id=1, message_type="train")
    ctx = Context(1, 1, dict(a["nc"]), RecordDict(), dict(a["rc"]))
    site = sys.modules["clients.site"]
    train_epochs = site.train_epochs

    def timed(*args, **kwargs):  # the training's own wall and CPU (its CPU is not its wall)
        t = now()
        try:
            return train_epochs(*args, **kwargs)
        finally:
            mark(marks, "training", t)

    site.train_epochs = timed
    t = mark(marks, "setup", t)  # the message as flwr-clientapp would have pulled it
    clients.app.app(msg, ctx)
    mark(marks, "handle", t)


phase, arg = sys.argv[1], json.loads(sys.argv[2])
marks = {}
if phase == "setup":
    marks = setup(arg)
elif phase != "python":
    run = {"import": phase_import, "load": phase_load, "data": phase_data, "message": phase_message}
    run[phase](arg, marks)
print("CLIENTAPP-START " + json.dumps(marks), flush=True)
"""


Times = tuple[float, float]  # (wall, cpu) seconds


@dataclass(frozen=True)
class Checkout:
    """A checkout to time, with its own cache of the shared data and its run config."""

    root: Path
    nc: dict[str, str]
    rc: dict[str, object]
    state: Path


def run_child(root: Path, phase: str, arg: dict) -> tuple[dict, Times]:
    """`python -c CHILD phase arg` with `root` as cwd and PYTHONPATH: what it printed (its
    own marks) and its whole life (wall; CPU of it and of the children it reaped)."""
    before = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, phase, json.dumps(arg)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
    )
    life = (time.perf_counter() - t0, _children_cpu() - before)
    if proc.returncode != 0:
        raise SystemExit(f"[{phase}] child in {root} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith(TAG))
    return json.loads(line[len(TAG) :]), life


def _children_cpu() -> float:
    """CPU seconds of every reaped child so far (children run one at a time)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def make_data(out: Path, patients: int) -> dict[str, object]:
    """The synthetic twin, split as the demo config splits it; the config overrides that
    point the demo config at it."""
    from shared.config.experiment import load_config
    from shared.prep.splits import make_splits
    from shared.prep.synth.twin import synthesize

    synthesize(out / "data", patients, 128, seed=2)
    overrides: dict[str, object] = {
        "output_dir": str(out / "run"),
        "data.datasets.nih.root": str(out / "data" / "nih"),
        "data.datasets.rsna.root": str(out / "data" / "rsna"),
        "training.local_epochs": 1,
    }
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    make_splits(cfg.data, cfg.seed, cfg.splits_dir)
    return overrides


def prepare(root: Path, i: int, out: Path, overrides: dict, arch: str, site: str) -> Checkout:
    """This checkout's run config and initial weights, its cache warmed (a setup child)."""
    from shared.config.experiment import load_config
    from shared.data.manifest import site_manifest_path

    splits = load_config(REPO / "configs" / "demo.yaml", overrides).splits_dir
    nc = {
        "site": site,
        "manifest": str(site_manifest_path(splits, site)),
        "cache-dir": str(out / f"cache-{i}"),
    }
    state = out / f"state-{i}.pt"
    arg = {
        "config": str(root / "configs" / "demo.yaml"),
        "overrides": overrides,
        "arch": arch,
        "store": str(out / f"store-{i}"),
        "nc": nc,
        "state": str(state),
    }
    got, _ = run_child(root, "setup", arg)
    return Checkout(root, nc, got["rc"], state)


def sample(c: Checkout, phase: str) -> dict[str, Times]:
    """One fresh process of `phase`: the rows it measures."""
    arg = {"checkout": str(c.root), "nc": c.nc, "rc": c.rc, "state": str(c.state)}
    marks, (wall, cpu) = run_child(c.root, phase, arg)
    t = {k: (float(v[0]), float(v[1])) for k, v in marks.items()}
    if phase == "python":
        return {"python": (wall, cpu)}
    if phase == "import":
        return {"import": t["import"], "import-process": (wall, cpu)}
    if phase == "message":
        train, handle, setup = t["training"], t["handle"], t["setup"]
        return {
            "message": (wall - train[0] - setup[0], cpu - train[1] - setup[1]),
            "handler": (handle[0] - train[0], handle[1] - train[1]),
            "training": train,
        }
    return {k: v for k, v in t.items() if k in dict(ROWS) and k != "import"}


def median(xs: list[Times]) -> Times:
    return statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)


def report(checkouts: list[Checkout], got: list[dict[str, list[Times]]], repeats: int) -> None:
    names = [str(c.root) for c in checkouts]
    print(f"\n[clientapp] cold start per message, median of {repeats} fresh processes, seconds (wall / CPU)")
    for i, n in enumerate(names):
        print(f"  checkout {i}: {n}")
    head = "".join(f"{f'{i}: wall':>10}{'cpu':>8}" for i in range(len(names)))
    compare = f"{'ratio wall':>11}{'cpu':>6}{'saved cpu':>10}" if len(names) > 1 else ""
    print(f"  {'phase':<42}{head}{compare}")
    for key, label in ROWS:
        if not all(got[i].get(key) for i in range(len(names))):
            continue
        meds = [median(got[i][key]) for i in range(len(names))]
        cells = "".join(f"{w:>10.3f}{c:>8.3f}" for w, c in meds)
        if len(meds) > 1 and key != "training":
            (w0, c0), (w1, c1) = meds[0], meds[-1]
            cells += f"{_ratio(w0, w1):>11}{_ratio(c0, c1):>6}{c0 - c1:>10.3f}"
        print(f"  {label:<42}{cells}")
    if len(names) > 1:
        print(
            f"  ratio: checkout 0 / checkout {len(names) - 1} (above 1: the latter is faster); "
            "saved: their difference"
        )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def bench(args: argparse.Namespace) -> None:
    roots = [Path(d).resolve() for d in (args.checkout or [str(REPO)])]
    phases = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}")
    with tempfile.TemporaryDirectory(prefix="fedattack-coldstart-") as tmp:
        out = Path(tmp)
        overrides = make_data(out, args.patients)
        checkouts = [prepare(r, i, out, overrides, args.arch, args.site) for i, r in enumerate(roots)]
        got: list[dict[str, list[Times]]] = [{} for _ in checkouts]
        for _ in range(args.repeats):  # interleaved: every phase of every checkout, then again
            for phase in phases:
                for i, c in enumerate(checkouts):
                    for key, t in sample(c, phase).items():
                        got[i].setdefault(key, []).append(t)
        report(checkouts, got, args.repeats)
        print(
            f"  site {args.site}, {args.arch}, demo config (configs/demo.yaml, one local epoch), "
            f"{args.patients} synthetic patients; {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs"
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkout",
        action="append",
        help="a checkout to time (cwd and PYTHONPATH of its processes); repeat it to compare, "
        "the first is the baseline (default: this one)",
    )
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per phase and checkout")
    p.add_argument("--patients", type=int, default=120, help="synthetic patients (the twin)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--site", default="C", help="the site whose data the processes open (C: DICOM)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    bench(p.parse_args())


if __name__ == "__main__":
    main()
