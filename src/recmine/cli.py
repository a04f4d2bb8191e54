"""`recmine` command root: mounts the three system families (mine, retrieve, ekko) and the demo."""

from __future__ import annotations

import typer

from recmine.ekko.cli import app as ekko_app
from recmine.faery.cli import app as faery_app
from recmine.g2miner.cli import app as g2miner_app

app = typer.Typer(
    name="recmine",
    help=(
        "recmine: fresh models (ekko), exact retrieval (faery) and graph pattern mining (g2miner) "
        "for recommender and data-mining engineers.\n\n"
        "Examples:\n\n"
        "  recmine mine count --graph g.txt --pattern diamond\n\n"
        "  recmine retrieve build --vectors items.npy --out idx/\n\n"
        "  recmine ekko cluster up --topology topo.json\n\n"
        "Every command that reports results takes --json and then prints one JSON object."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(g2miner_app, name="mine")
app.add_typer(faery_app, name="retrieve")
app.add_typer(ekko_app, name="ekko")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
