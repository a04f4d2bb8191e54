"""`recmine retrieve`: exact embedding retrieval commands (faery)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Exact embedding retrieval (faery): build, search, serve and benchmark indexes.",
                  no_args_is_help=True)
