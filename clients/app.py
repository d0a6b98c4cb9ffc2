"""ClientApp wiring: parse the node and run configs, call clients.site, reply."""

from __future__ import annotations

import gc

# Flower starts a process per message, and what the imports below make (torch, timm:
# ~400,000 objects) lives until it exits: the collector's passes over them are wasted.
# Paused while they import (~0.5 s of each message), then frozen, so that it skips them,
# above all in its passes at the interpreter's exit (~0.9 s; benchmarks/clientapp_start.py).
gc.disable()

import math  # noqa: E402

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from clients.site import Instructions, check_pin, train_site  # noqa: E402
from shared.config.node import NodeConfig  # noqa: E402
from shared.config.run import RunSettings  # noqa: E402
from shared.errors import FederationError  # noqa: E402
from shared.ml.calibration import MARGINS  # noqa: E402
from shared.ml.wire import FLAT_KEY, arrays_in, config_in, config_value, to_record  # noqa: E402

gc.freeze()
gc.enable()

app = ClientApp()
KEPT_BN = "fedbn-batchnorm"  # context.state: FedBN, this site's own BatchNorm for this run


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = NodeConfig.from_flower(dict(context.node_config))
    run = RunSettings.from_run_config(dict(context.run_config))
    if run.site_archs:  # feddf: this site trains its own architecture, and only that one
        run = run.for_site(node.site)
    check_pin(node, run)
    config = config_in(msg.content, "config")
    sent = config_value(config, "arch", str, run.arch)
    if sent != run.arch:
        raise FederationError(
            f"site {node.site} trains {run.arch} but the server sent a {sent[:60]} model; refused"
        )
    received = arrays_in(msg.content)
    personal_bn = config_value(config, "personal-bn", bool, False)
    kept = context.state.get(KEPT_BN) if personal_bn else None
    ask = Instructions(
        server_round=config_value(config, "server-round", int) + config_value(config, "round-offset", int, 0),
        finetune=config_value(config, "phase", str, "fedavg") == "finetune",
        proximal_mu=config_value(config, "proximal-mu", float, 0.0),
        personal_bn=personal_bn,
        kept_bn=kept if isinstance(kept, ArrayRecord) else None,
    )
    result = train_site(node, run, received, ask)
    if result.personal_bn is not None:  # stays on this node, in Flower's per-run state
        context.state[KEPT_BN] = to_record(result.personal_bn)
    content = RecordDict(
        {
            "arrays": to_record(result.state),
            "metrics": MetricRecord(dict(result.metrics)),
            # what this site received, as it saw it (feddf records it beside what was sent)
            "meta": ConfigRecord(
                {"site": node.site, "received-arch": sent, "received-weights": received_size(received)}
            ),
        }
    )
    if ask.finetune and result.received_bn is not None:  # the server pools them into the global
        content["received-bn"] = to_record(result.received_bn)
    if result.received_margins is not None:  # the server cuts the global's threshold on them
        content[MARGINS] = ArrayRecord({"counts": Array(result.received_margins)})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which site this node is (feddf's server asks once per node, to send each site its
    own architecture's model)."""
    node = NodeConfig.from_flower(dict(context.node_config))
    return Message(content=RecordDict({"meta": ConfigRecord({"site": node.site})}), reply_to=msg)


def received_size(record: ArrayRecord) -> int:
    """How many weights the packed record holds (0 when it holds no packed vector)."""
    arr = record.get(FLAT_KEY)
    return math.prod(arr.shape) if isinstance(arr, Array) else 0
