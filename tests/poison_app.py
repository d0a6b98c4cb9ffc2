"""A test-only ClientApp that corrupts chosen replies: the product's ClientApp
(clients.app) runs unchanged, then the reply of a planned (store, site, round) has its
weights replaced by a broken version. It is never part of the product's app package:
tests/test_robust_federation.py builds a copy of the app folder whose pyproject.toml
names this module as the ClientApp and writes the plan beside it (`poisonapp/plan.json`:
store -> site -> round -> fault), and submits that folder (FEDATTACK_APP_DIR). No setting
of the real app can reach it.

Faults: "nan" (every 7th weight NaN), "scale" (the update, reply minus the global
received, times 1e6), "shape" (one weight short)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.app import train as honest_train
from shared.config.node import NodeConfig
from shared.config.run import RunSettings
from shared.ml.wire import FLAT_KEY, arrays_in, config_in, config_value

PLAN_FILE = Path(__file__).with_name("plan.json")  # written by the test into the app's copy
PLAN = json.loads(PLAN_FILE.read_text()) if PLAN_FILE.is_file() else {}
app = ClientApp()


def corrupt(fault: str, reply: np.ndarray, received: np.ndarray) -> np.ndarray:
    """The broken version of a site's packed weights."""
    if fault == "nan":
        x = reply.copy()
        x[::7] = np.nan
        return x
    if fault == "scale":
        return (received + 1e6 * (reply - received)).astype(np.float32)
    if fault == "shape":
        return reply[:-1].copy()
    raise ValueError(f"unknown fault {fault!r}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest_train(msg, context)
    run = RunSettings.from_run_config(dict(context.run_config))
    site = NodeConfig.from_flower(dict(context.node_config)).site
    config = config_in(msg.content, "config")
    rnd = config_value(config, "server-round", int) + config_value(config, "round-offset", int, 0)
    fault = PLAN.get(str(run.store), {}).get(site, {}).get(str(rnd))
    if fault:
        received = arrays_in(msg.content)[FLAT_KEY].numpy()
        weights = arrays_in(reply.content)[FLAT_KEY].numpy()
        reply.content["arrays"] = ArrayRecord({FLAT_KEY: Array(corrupt(fault, weights, received))})
    return reply
