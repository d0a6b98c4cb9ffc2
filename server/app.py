"""ServerApp wiring: parse the run config, run the federation for one architecture (or,
under feddf, the one federation of every architecture)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.feddf import HeteroFederation
from server.federation import Federation, run_federation
from shared.config.run import RunSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunSettings.from_run_config(dict(context.run_config))
    run_federation(grid, run, HeteroFederation if run.federation.strategy == "feddf" else Federation)
