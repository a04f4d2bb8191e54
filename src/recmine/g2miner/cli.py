"""`recmine mine`: graph pattern mining commands (g2miner)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Graph pattern mining (g2miner): count and list patterns, motifs, frequent subgraphs.",
                  no_args_is_help=True)
