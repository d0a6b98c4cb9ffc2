"""ServerApp wiring: parse the run config, run the federation for one architecture (or,
under feddf, the one federation of every architecture)."""

from __future__ import annotations

import gc

# As in clients/app.py: the collector paused while torch and timm import (their ~400,000
# objects live as long as the process), then those objects frozen out of its passes.
gc.disable()

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from server.feddf import HeteroFederation  # noqa: E402
from server.federation import Federation, run_federation  # noqa: E402
from shared.config.run import RunSettings  # noqa: E402

gc.freeze()
gc.enable()

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunSettings.from_run_config(dict(context.run_config))
    run_federation(grid, run, HeteroFederation if run.federation.strategy == "feddf" else Federation)
