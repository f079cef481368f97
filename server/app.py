"""The coordinator's Flower ServerApp."""
from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config once, then run the federation."""
    config = RunConfig.from_mapping(context.run_config)
    result = run_federation(config, grid)
    last = result.history[-1] if result.history else {}
    heldout = (last.get("heldout") or {}).get("auc")
    print(f"fedrad: run '{config.run_name}' finished {len(result.history)} round(s)"
          + (f"; held-out AUC {heldout:.3f}" if heldout is not None else "")
          + f"; results in {result.run_dir}")
