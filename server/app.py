"""ServerApp wiring: parse the run config, run the federation for one architecture."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from shared.config.run import RunSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, RunSettings.from_run_config(dict(context.run_config)))
