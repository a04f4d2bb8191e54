"""`recmine` command root: mounts the three system families (mine, retrieve, ekko) and the demo."""

from __future__ import annotations

from pathlib import Path

import typer

from recmine.extras import MissingExtraError
from recmine.faery.cli import app as faery_app
from recmine.g2miner.cli import app as g2miner_app

ekko_missing: str | None = None
try:
    from recmine.ekko.cli import app as ekko_app
except MissingExtraError as exc:  # the family stays listed, and says what to install when used
    ekko_missing = str(exc)

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
if ekko_missing is None:
    app.add_typer(ekko_app, name="ekko")
else:

    @app.command("ekko", help=f"(not installed here) {ekko_missing}",
                 context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def ekko_not_installed(ctx: typer.Context) -> None:
        """Stands in for the ekko family when its extra is missing."""
        raise MissingExtraError(ekko_missing)


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
    """Console-script entry point; a part used without its extra installed ends with one line naming it."""
    try:
        app()
    except MissingExtraError as exc:
        from recmine.output import err_console

        err_console.print(f"error: {exc}", markup=False, style="red")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
