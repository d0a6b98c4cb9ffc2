"""FedDF end to end on Flower's deployment engine: a real SuperLink and four real
SuperNodes on loopback, two architectures (ResNet18 at sites A and C, MobileNetV3-small
at B and D), 48 px, two rounds, a few images per site and a small public split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.local import federate
from shared.config.experiment import load_config
from shared.ml.models import build_model
from shared.store.folder import CheckpointStore
from tests.flower_helpers import leftovers, tiny_data, tiny_federation_config

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("feddf")]
ARCHS = ["resnet18", "mobilenetv3_small_050"]
ASSIGN = {"A": "resnet18", "B": "mobilenetv3_small_050", "C": "resnet18", "D": "mobilenetv3_small_050"}
ROUNDS = 2


def test_a_heterogeneous_federation_distils_and_keeps_each_architecture_at_its_sites(tmp_path: Path) -> None:
    data = tiny_data(tmp_path)
    cfg = load_config(
        tiny_federation_config(
            tmp_path,
            data,
            ARCHS,
            rounds=ROUNDS,
            **{
                "data.image_size": 48,
                "data.split.public_fraction": 0.25,
                "federation.strategy": "feddf",
                "federation.site_architectures": ASSIGN,
                "federation.distill_steps": 10,
                "training.local_epochs": 1,
            },
        )
    )
    federate(cfg)
    store = CheckpointStore(cfg.store_dir)
    manifest = store.read_manifest()
    assert manifest["complete"] is True, manifest.get("missing")

    # the store: one global per architecture, each site's local of its own architecture only
    names = sorted(m.name for m in store.models())
    assert names == sorted([f"{a}-global" for a in ARCHS] + [f"{a}-local-{s}" for s, a in ASSIGN.items()])
    for m in store.models():
        state = store.load(m.file, m.sha256)
        assert m.arch == (ASSIGN[m.site] if m.site else m.arch)
        assert build_model(m.arch, 48, 1).load_state_dict(state) is not None  # its own architecture's shape
    rounds = sorted((r["arch"], r["round"]) for r in manifest["rounds"])
    assert rounds == sorted((a, r) for a in ARCHS for r in range(ROUNDS + 1))

    rows = [json.loads(x) for x in store.events_path.read_text().splitlines()]

    def events(kind: str) -> list[dict]:
        return [r for r in rows if r["event"] == kind]

    # every round, every architecture's average was distilled towards all four sites' models:
    # the distillation loss on the public split went down and the model it sends on changed
    distilled = events("distill")
    assert sorted((d["arch"], d["round"]) for d in distilled) == sorted(
        (a, r) for a in ARCHS for r in range(1, ROUNDS + 1)
    )
    for d in distilled:
        assert d["teachers"] == 4 and d["images"] > 0 and d["steps"] == 10
        assert d["loss-after"] < d["loss-before"], d
        assert d["change"] > 0, d

    # no site ever received another architecture's weights: what the server sent and what
    # each site says it received (its ClientApp refuses another architecture's model)
    size = {a: sum(v.numel() for v in build_model(a, 48, 1).state_dict().values()) for a in ARCHS}
    assert size[ARCHS[0]] != size[ARCHS[1]]
    stages = [("fedavg", r) for r in range(1, ROUNDS + 1)] + [("finetune", ROUNDS + 1)]
    for kind in ("feddf-sent", "feddf-received"):
        seen = sorted((e["stage"], e["round"], e["site"]) for e in events(kind))
        assert seen == sorted((st, r, s) for st, r in stages for s in ASSIGN), kind
    for e in events("feddf-sent"):
        assert (e["arch"], e["weights"]) == (ASSIGN[e["site"]], size[ASSIGN[e["site"]]]), e
    for e in events("feddf-received"):
        own = ASSIGN[e["site"]]
        assert (e["arch"], e["received-arch"], e["received-weights"]) == (own, own, size[own]), e
    # each site trained and was evaluated under its own architecture only
    for e in events("site-train") + events("site-finetune"):
        assert e["arch"] == ASSIGN[e["site"]], e
    assert [e["site_architectures"] for e in events("run-start")] == [ASSIGN]
    assert leftovers(str(cfg.output_dir)) == []
