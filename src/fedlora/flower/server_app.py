"""fedlora's Flower ServerApp: :class:`~fedlora.flower.server.FlowerServer` behind Flower's
``@app.main()`` entry point.

The run config carries the fedlora TOML config (``fedlora-config``) and the Flower settings of
:class:`~fedlora.flower.options.FlowerOptions`; ``fedlora flower app`` writes both.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.flower.options import FlowerOptions
from fedlora.flower.recipe import recipes_from_run_config
from fedlora.flower.server import FlowerServer

__all__ = ["app", "make_server_app"]

RecipeFactory = Callable[[Mapping[str, Any]], tuple[Any, Any]]


def _log(line: str) -> None:
    print(f"[fedlora] {line}", flush=True)


def make_server_app(recipes: RecipeFactory = recipes_from_run_config) -> ServerApp:
    """A ServerApp whose recipe comes from ``recipes(run_config)`` (default: the fedlora config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        options = FlowerOptions.from_run_config(context.run_config)
        server_recipe, _ = recipes(context.run_config)
        server = FlowerServer(grid, server_recipe, options, log=_log)
        server.run()
        _log(f"done: results in {server.store.root}")

    return app


app = make_server_app()
"""The ServerApp that ``fedlora flower app`` folders point Flower at."""
