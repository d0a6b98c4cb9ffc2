"""The attack CLI end to end on a store produced by a tiny real federation: outputs,
determinism, HTTP pull, tampering, bad input, an independent recomputation, and the attack
suite (every threat model, the outsider's isolation from the store)."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from shared.config.experiment import load_config
from tests.flower_helpers import tiny_data, tiny_federation_config
from tests.recompute import recompute

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("attack-fed")
    data = tiny_data(tmp)
    cfg_path = tiny_federation_config(
        tmp,
        data,
        ["resnet18"],
        rounds=1,
        **{
            "training.local_epochs": 2,
            "training.optimizer.lr": 0.003,
            "data.split.public_fraction": 0.2,  # the outsider's data
            "attack.iterative.steps": 2,
            # the transfer attacks at their smallest sizes (CI time)
            "attack.iterative.scale_copies": 2,
            "attack.iterative.variance_samples": 2,
            "attack.iterative.block_copies": 2,
            "attack.iterative.kernel_size": 5,
            "attack.universal.epochs": 2,
            "training.class_balance": True,
            "attack.outsider.epochs": 6,
            "attack.outsider.lr": 0.003,
        },
    )
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", "federate", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return cfg_path, load_config(cfg_path).store_dir


def attack(cfg: Path, store: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "attack",
            "--config",
            str(cfg),
            "--checkpoints",
            store,
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def first_run(fed, tmp_path_factory):
    cfg, store = fed
    out = tmp_path_factory.mktemp("attack-out")
    res = attack(cfg, str(store), out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_outputs_and_their_contract(fed, first_run) -> None:
    out, res = first_run
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert len(names) == 5 and "resnet18-global" in names
    assert results["eps"] == 0.02 and results["attack"] == "fgsm"
    assert len(results["cells"]) == 25
    attacked = results["sources"]
    for cell in results["cells"]:
        assert cell["white_box"] == (cell["source"] == cell["target"])
        assert 0 <= cell["n_misclassified_after"] <= cell["n_correct_before"]
        assert cell["n_correct_before"] <= attacked[cell["source"]]["n_attacked"]
        if cell["n_correct_before"]:
            assert cell["transferability"] == pytest.approx(
                cell["n_misclassified_after"] / cell["n_correct_before"]
            )
        else:
            assert cell["transferability"] is None
    for src, info in attacked.items():  # the attacked images come from the held-out sets
        assert all(i.startswith(("test_nih/", "test_rsna/")) for i in info["attacked"])
        white = next(c for c in results["cells"] if c["source"] == src and c["target"] == src)
        assert white["n_correct_before"] == info["n_attacked"]
    rows = list(csv.reader((out / "matrix.csv").open()))
    assert rows[0][1:] == names and len(rows) == 6
    report = (out / "report.md").read_text()
    assert "| resnet18 |" in report and "published" in report.lower()
    assert "Global vs local" in report
    assert (out / "heatmap.png").stat().st_size > 10_000
    assert (out / "config.yaml").exists()
    assert "report:" in res.stdout


def test_same_inputs_give_identical_results(fed, first_run, tmp_path: Path) -> None:
    cfg, store = fed
    res = attack(cfg, str(store), tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "results.json").read_bytes() == (first_run[0] / "results.json").read_bytes()


@pytest.fixture
def http_store(fed):
    _, store = fed
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(store))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_pull_over_http_gives_the_same_results(fed, first_run, http_store, tmp_path: Path) -> None:
    cfg, _ = fed
    res = attack(cfg, http_store, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    ours = json.loads((tmp_path / "results.json").read_text())
    ref = json.loads((first_run[0] / "results.json").read_text())
    ours.pop("store"), ref.pop("store")
    assert ours == ref


def test_tampered_file_is_refused_or_skipped(fed, tmp_path: Path) -> None:
    cfg, store = fed
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    victim = copy / "resnet18-local-B.safetensors"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    res = attack(cfg, str(copy), tmp_path / "out1")
    assert res.returncode != 0
    assert "sha256 mismatch" in res.stderr and "resnet18-local-B" in res.stderr
    assert "--skip-bad" in res.stderr
    assert not (tmp_path / "out1" / "results.json").exists()
    res = attack(cfg, str(copy), tmp_path / "out2", "--skip-bad")
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert [s["name"] for s in results["skipped"]] == ["resnet18-local-B"]
    assert len(results["models"]) == 4
    shutil.copy(store / "resnet18-local-B.safetensors", victim)
    (copy / "resnet18-local-A.safetensors").unlink()
    res = attack(cfg, str(copy), tmp_path / "out3")
    assert res.returncode != 0 and "resnet18-local-A.safetensors" in res.stderr


def incomplete_copy(store: Path, dest: Path) -> str:
    """Copy the store with `complete` set to false; return the original manifest text."""
    shutil.copytree(store, dest)
    manifest = (dest / "manifest.json").read_text()
    (dest / "manifest.json").write_text(json.dumps({**json.loads(manifest), "complete": False}))
    return manifest


def test_bad_stores_and_settings_fail_clearly(fed, tmp_path: Path) -> None:
    cfg, store = fed
    incomplete = tmp_path / "incomplete"
    incomplete_copy(store, incomplete)
    res = attack(cfg, str(incomplete), tmp_path / "o1")
    assert res.returncode != 0 and "incomplete" in res.stderr and "--watch" in res.stderr
    (incomplete / "manifest.json").write_text('{"complete": true, "models": [{"name": 1}]}')
    res = attack(cfg, str(incomplete), tmp_path / "o2")
    assert res.returncode != 0 and "malformed model entry" in res.stderr
    res = attack(cfg, "http://127.0.0.1:9/nothing", tmp_path / "o3")
    assert res.returncode != 0 and "unreachable" in res.stderr
    bad_eps = tmp_path / "eps.yaml"
    text = Path(cfg).read_text().replace("eps: 0.02", "eps: 2.0")
    bad_eps.write_text(text)
    res = attack(bad_eps, str(store), tmp_path / "o4")
    assert res.returncode != 0 and "eps" in res.stderr


def test_watch_waits_for_a_complete_store(fed, tmp_path: Path) -> None:
    cfg, store = fed
    pending = tmp_path / "pending"
    manifest = incomplete_copy(store, pending)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "attack",
            "--config",
            str(cfg),
            "--checkpoints",
            str(pending),
            "--out",
            str(tmp_path / "o"),
            "--watch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=8)  # still waiting: the store is incomplete
        (pending / "manifest.json").write_text(manifest)
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert (tmp_path / "o" / "results.json").exists()


def test_an_independent_recomputation_reproduces_every_count(fed, first_run) -> None:
    """Plain torch/timm/safetensors/Pillow/pydicom from the stored models and the raw image
    files (tests/recompute.py), at the recorded batch size and precision."""
    cfg, store = fed
    results = json.loads((first_run[0] / "results.json").read_text())
    assert results["provenance"]["dtype"] == "float32"
    counts = recompute(load_config(cfg).splits_dir, Path(store), results)
    ours = {
        (c["source"], c["target"]): (
            c["n_correct_before"],
            c["n_misclassified_after"],
            c["n_control_misclassified"],
        )
        for c in results["cells"]
    }
    assert ours == counts


NEW_ATTACKS = ("nifgsm", "sinifgsm", "vmifgsm", "tifgsm", "sgm", "bsr", "pgd+margin")


@pytest.fixture(scope="module")
def suite_run(fed, tmp_path_factory):
    cfg, store = fed
    out = tmp_path_factory.mktemp("suite-out")
    res = attack(
        cfg,
        str(store),
        out,
        "--attack",
        "fgsm,pgd,uap",
        "--threat",
        "member,insider,outsider",
        "--eps",
        "2/255,0.02",  # both units
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "suite", res


def test_suite_report_and_folders(suite_run) -> None:
    suite, res = suite_run
    md = (suite / "suite.md").read_text()
    for attack_name in ("fgsm", "pgd", "uap"):
        for threat in ("member", "insider", "outsider"):
            folder = suite / f"{attack_name}-{threat}"
            assert {p.name for p in folder.iterdir()} >= {"results.json", "matrix.csv", "heatmap.png"}
            assert f"[{attack_name}]({attack_name}-{threat}/results.json) | {threat} |" in md
    assert (suite / "sweep" / f"fgsm-member-eps{2 / 255:g}" / "results.json").exists()
    # the suite's fgsm/member at 0.02 is the job's own measurement, reused: the same counts
    assert res.stdout.count("reused, not measured again") == 1

    def counts(path: Path) -> list[tuple]:
        cells = json.loads(path.read_text())["cells"]
        keys = ("source", "target", "n_correct_before", "n_misclassified_after", "n_control_misclassified")
        return sorted(tuple(c[k] for k in keys) for c in cells)

    assert counts(suite / "fgsm-member" / "results.json") == counts(suite.parent / "results.json")
    assert (suite / "sweep.png").stat().st_size > 10_000 and "eps 0.00784 (2/255)" in md and "ctrl" in md
    insider = json.loads((suite / "pgd-insider" / "results.json").read_text())
    assert sorted(insider["sources"]) == ["insider-A", "insider-B", "insider-C", "insider-D"]
    for c in insider["cells"]:  # a site's ensemble holds its own local model and the global
        own = c["target"] in (f"resnet18-local-{c['source'][-1]}", "resnet18-global")
        assert c["white_box"] == own
        assert c["n_control_misclassified"] is not None and len(c["interval"]) == 2
    # the default ensemble divides each member's logits by its margin's sd (recorded)
    assert insider["ensemble"]["mode"] == "scaled" and "`attack.suite.ensemble: scaled`" in md
    # the attack against noise: a paired test over the targets, in results.json and suite.md
    # (one pair per target with a usable cell: none in this tiny store, whose cells hold
    # under 10 images; tests/test_attack_units.py checks the arithmetic)
    usable = {c["target"] for c in insider["cells"] if not c["white_box"] and c["n_correct_before"] >= 10}
    assert insider["over_control"]["n_pairs"] == len(usable)
    against = md.split("## The attack against noise at eps 0.02")[1].split("##")[0]
    assert "| pgd | insider |" in against and "| pgd | outsider |" in against
    scales = insider["ensemble"]["scales"]["insider-A"]
    assert set(scales) == {"resnet18-local-A", "resnet18-global"} and min(scales.values()) > 0
    outsider = json.loads((suite / "pgd-outsider" / "results.json").read_text())
    assert list(outsider["sources"]) == ["outsider-resnet18"]
    assert not any(c["white_box"] for c in outsider["cells"])
    uap = json.loads((suite / "uap-member" / "results.json").read_text())
    for name, src in uap["sources"].items():  # measured only on images it was not fitted on
        assert not set(src["fit"]) & set(src["attacked"]), name
    # both controls, the fooling rate, the perceptual figures, the ranking in both units
    pgd = json.loads((suite / "pgd-member" / "results.json").read_text())
    assert all(0 <= c["n_shuffled_misclassified"] <= c["n_correct_before"] for c in pgd["cells"])
    for src in pgd["sources"].values():
        if not src["empty"]:
            assert src["perceptual"]["linf"] <= 0.02 + 1e-6 and 0 < src["perceptual"]["ssim"] <= 1
    assert all(c["n_fooled"] <= c["n_fooling_images"] for c in uap["cells"])
    assert "## Ranking at eps 0.00784 (2/255)" in md and "## Ranking at eps 0.02 (5.1/255)" in md
    assert "| outsider | pgd |" in md
    assert "suite report:" in res.stdout


@pytest.fixture(scope="module")
def transfer_run(fed, tmp_path_factory):
    """The transfer literature's attacks at their smallest sizes, on the outsider's one
    surrogate (the cheapest threat: one source) at the study's eps."""
    cfg, store = fed
    out = tmp_path_factory.mktemp("transfer-out")
    res = attack(
        cfg, str(store), out, "--attack", ",".join(NEW_ATTACKS), "--threat", "outsider", "--eps", "0.02"
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "suite"


def test_the_transfer_attacks_run_through_the_suite(transfer_run) -> None:
    md = (transfer_run / "suite.md").read_text()
    for name in NEW_ATTACKS:
        res = json.loads((transfer_run / f"{name}-outsider" / "results.json").read_text())
        assert res["attack"] == name and len(res["cells"]) == 5
        assert all("n_shuffled_misclassified" in c for c in res["cells"])
        src = res["sources"]["outsider-resnet18"]
        if not src["empty"]:
            assert src["perceptual"]["linf"] <= 0.02 + 1e-6
        assert f"| outsider | {name} |" in md


def test_outsider_crafting_never_uses_the_stores_weights(fed, suite_run, tmp_path: Path) -> None:
    """The same outsider attack against a store of other weights crafts exactly the same
    adversarial images on exactly the same images (only the targets' counts change)."""
    cfg, store = fed
    other = tmp_path / "store"
    shutil.copytree(store, other)
    manifest = json.loads((other / "manifest.json").read_text())
    from shared.ml.models import build_model
    from shared.store.checkpoint import encode_state, sha256_bytes

    for i, entry in enumerate(manifest["models"]):  # fresh weights, valid hashes and metadata
        torch.manual_seed(100 + i)
        model = build_model(entry["arch"], entry["input"]["size"], entry["input"]["channels"])
        data = encode_state(model.state_dict(), {"arch": entry["arch"], "input": entry["input"]})
        (other / entry["file"]).write_bytes(data)
        entry["sha256"] = sha256_bytes(data)
    (other / "manifest.json").write_text(json.dumps(manifest))
    res = attack(cfg, str(other), tmp_path / "out", "--attack", "pgd", "--threat", "outsider")
    assert res.returncode == 0, res.stderr[-3000:]
    ours = json.loads((tmp_path / "out" / "suite" / "pgd-outsider" / "results.json").read_text())
    ref = json.loads((suite_run[0] / "pgd-outsider" / "results.json").read_text())
    for name in ref["sources"]:
        assert ref["sources"][name]["n_attacked"] > 0, f"{name} attacked nothing: the test is vacuous"
        assert ours["sources"][name]["attacked"] == ref["sources"][name]["attacked"]
        assert ours["sources"][name]["code_sha256"] == ref["sources"][name]["code_sha256"]
    assert [c["n_correct_before"] for c in ours["cells"]] != [c["n_correct_before"] for c in ref["cells"]]


def test_outsider_surrogates_carry_the_statistics_of_their_final_weights(fed, suite_run) -> None:
    """A stored outsider surrogate's BatchNorm statistics are those of its final weights on
    its public training images (re-estimated after training, as the sites' models are),
    not the running averages left over from training from random init."""
    from torch.utils.data import DataLoader

    from attack.measure.outsider import INDEX, public_split
    from shared.ml.batchnorm import recalibrate, statistics
    from shared.ml.models import build_model, model_from_state
    from shared.store.checkpoint import decode_state

    cfg = load_config(fed[0])
    folder = suite_run[0] / "outsider"
    entry = json.loads((folder / INDEX).read_text())["resnet18"]
    state = decode_state((folder / entry["file"]).read_bytes(), entry["sha256"], entry["file"])
    spec = build_model("resnet18", cfg.data.image_size, cfg.data.channels).spec
    stored = model_from_state("resnet18", spec, state)
    fresh = model_from_state("resnet18", spec, state)
    train, _ = public_split(cfg, "train")
    assert recalibrate(
        fresh, DataLoader(train, batch_size=cfg.attack.outsider.batch_size), torch.device("cpu")
    )
    ours, again = statistics(stored), statistics(fresh)
    assert ours.keys() == again.keys() and len(ours) > 0
    for key in ours:
        torch.testing.assert_close(ours[key], again[key], rtol=1e-4, atol=1e-5, msg=key)


def test_suite_settings_fail_before_any_model_is_loaded(fed, tmp_path: Path) -> None:
    cfg, store = fed
    res = attack(cfg, str(store), tmp_path / "a", "--attack", "pgd,deepfool")
    assert res.returncode == 2 and "unknown attack 'deepfool'" in res.stderr and "midi" in res.stderr
    res = attack(cfg, str(store), tmp_path / "b", "--threat", "spy")
    assert res.returncode == 2 and "unknown threat model 'spy'" in res.stderr
    res = attack(cfg, str(store), tmp_path / "c", "--eps", "0.01,-0.5")
    assert res.returncode == 2 and "sweep_eps" in res.stderr
    res = attack(cfg, str(store), tmp_path / "d", "--eps", "0.01,lots")
    assert res.returncode == 2 and "--eps" in res.stderr
    for r in (res,):
        assert "Traceback" not in r.stdout + r.stderr
