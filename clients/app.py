"""ClientApp wiring: parse the node and run configs, call clients.site, reply."""

from __future__ import annotations

import gc

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.site import Instructions, check_pin, train_site
from shared.config.node import NodeConfig
from shared.config.run import RunSettings
from shared.ml.calibration import MARGINS
from shared.ml.wire import arrays_in, config_in, config_value, to_record

# Flower starts a process per message: what the imports above made (torch, timm: ~400,000
# objects) lives until it exits. Frozen, the collector skips them, above all in its passes
# at the interpreter's exit (~0.9 s of each message; benchmarks/clientapp_start.py).
gc.freeze()

app = ClientApp()
KEPT_BN = "fedbn-batchnorm"  # context.state: FedBN, this site's own BatchNorm for this run


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = NodeConfig.from_flower(dict(context.node_config))
    run = RunSettings.from_run_config(dict(context.run_config))
    check_pin(node, run)
    config = config_in(msg.content, "config")
    personal_bn = config_value(config, "personal-bn", bool, False)
    kept = context.state.get(KEPT_BN) if personal_bn else None
    ask = Instructions(
        server_round=config_value(config, "server-round", int) + config_value(config, "round-offset", int, 0),
        finetune=config_value(config, "phase", str, "fedavg") == "finetune",
        proximal_mu=config_value(config, "proximal-mu", float, 0.0),
        personal_bn=personal_bn,
        kept_bn=kept if isinstance(kept, ArrayRecord) else None,
    )
    result = train_site(node, run, arrays_in(msg.content), ask)
    if result.personal_bn is not None:  # stays on this node, in Flower's per-run state
        context.state[KEPT_BN] = to_record(result.personal_bn)
    content = RecordDict(
        {
            "arrays": to_record(result.state),
            "metrics": MetricRecord(dict(result.metrics)),
            "meta": ConfigRecord({"site": node.site}),
        }
    )
    if ask.finetune and result.received_bn is not None:  # the server pools them into the global
        content["received-bn"] = to_record(result.received_bn)
    if result.received_margins is not None:  # the server cuts the global's threshold on them
        content[MARGINS] = ArrayRecord({"counts": Array(result.received_margins)})
    return Message(content=content, reply_to=msg)
