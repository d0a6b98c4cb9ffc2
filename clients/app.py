"""ClientApp wiring: parse the node and run configs, call clients.site, reply."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.site import check_pin, train_site
from shared.nodeconfig import NodeConfig
from shared.packing import arrays_in, config_in, config_int, config_str, to_record
from shared.runconfig import RunSettings

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = NodeConfig.from_flower(dict(context.node_config))
    run = RunSettings.from_run_config(dict(context.run_config))
    check_pin(node, run)
    config = config_in(msg.content, "config")
    finetune = config_str(config, "phase", "fedavg") == "finetune"
    rnd = config_int(config, "server-round") + config_int(config, "round-offset", 0)
    result = train_site(node, run, arrays_in(msg.content), rnd, finetune)
    content = RecordDict(
        {
            "arrays": to_record(result.state),
            "metrics": MetricRecord(dict(result.metrics)),
            "meta": ConfigRecord({"site": node.site}),
        }
    )
    if finetune and result.received_bn is not None:  # the server pools them into the global
        content["received-bn"] = to_record(result.received_bn)
    return Message(content=content, reply_to=msg)
