"""ServerApp: Spry's server (the Rust core) driving the SuperNodes through SpryStrategy."""

from __future__ import annotations

from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from .strategy import SpryStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from spry_flwr_native import Server

    rc = context.run_config
    config = str(rc.get("spry-config", "")) or None
    overrides = str(rc.get("spry-overrides", "")) or None
    out_dir = str(rc.get("out-dir", "runs/flower"))
    resume = bool(rc.get("resume", False))
    server = Server(out_dir, config, overrides, resume)
    log(INFO, "spry: %s rounds, %s clients, %s, results in %s", server.rounds, server.n_clients,
        server.comm, out_dir)
    strategy = SpryStrategy(
        server,
        min_nodes=int(rc.get("min-nodes", 1)),
        round_timeout=float(rc.get("round-timeout", 600.0)),
        wait_nodes_timeout=float(rc.get("wait-nodes-timeout", 120.0)),
        out_dir=out_dir,
    )
    summary = strategy.run(grid)
    print("SPRY_SUMMARY", summary.get("final_test_accuracy"), flush=True)
