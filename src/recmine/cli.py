"""`recmine` command root: mounts the three system families (mine, retrieve, ekko) and the demo."""

from __future__ import annotations

from pathlib import Path

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


@app.command("demo")
def demo(
    report: Path | None = typer.Option(None, "--report", help="Write report.html + results.json into this directory."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes (CI): well under a minute once compiled."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with every result (tables go to stderr)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated data."),
) -> None:
    """Run the three systems together on generated data; tables of ours vs the peers, optional HTML report.

    Stages: ekko (4-DC cluster behind an emulated WAN, an online learner writing to DC 0, live per-DC update latency),
    faery (exact top-K over the live item table, latency vs K beside Faiss) and g2miner (triangles and 4-cliques
    of the co-interaction graph with planted fake-engagement rings, beside networkx and igraph). A stage whose
    engine is missing is reported and skipped. Every process the demo starts is stopped on exit and on Ctrl-C.

    Examples:

      recmine demo

      recmine demo --quick --report out/ --json > results.json
    """
    from recmine.demo import main as demo_main

    raise typer.Exit(demo_main(report=report, quick=quick, as_json=json_out, seed=seed))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
