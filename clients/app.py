"""ClientApp wiring: parse the node and run configs, call clients.site, reply."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.site import SiteSettings, check_agreement, evaluate_site, train_site
from shared.packing import to_record
from shared.runconfig import RunSettings

app = ClientApp()


def _setup(msg: Message, context: Context):
    site = SiteSettings.from_node_config(dict(context.node_config))
    run = RunSettings.from_run_config(dict(context.run_config))
    config = msg.content["config"]
    check_agreement(site, run, str(config["arch"]), int(config["image-size"]))
    return site, run, config, msg.content["arrays"]


def _meta(site: SiteSettings, run: RunSettings) -> ConfigRecord:
    return ConfigRecord({"site": site.site, "arch": run.arch, "image-size": run.image_size})


@app.train()
def train(msg: Message, context: Context) -> Message:
    site, run, config, state = _setup(msg, context)
    finetune = str(config.get("phase", "fedavg")) == "finetune"
    rnd = int(config["server-round"]) + int(config.get("round-offset", 0))
    new_state, metrics = train_site(site, run, state, rnd, finetune)
    content = RecordDict({"arrays": to_record(new_state), "metrics": MetricRecord(metrics),
                          "meta": _meta(site, run)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site, run, _, state = _setup(msg, context)
    metrics = evaluate_site(site, run, state)
    content = RecordDict({"metrics": MetricRecord(metrics), "meta": _meta(site, run)})
    return Message(content=content, reply_to=msg)
