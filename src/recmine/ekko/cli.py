"""`recmine ekko`: geo-distributed parameter servers and model updates (ekko)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Low-latency model updates across data centres (ekko): clusters, runs, benchmarks.",
                  no_args_is_help=True)
