"""`recmine mine`: graph pattern mining commands (g2miner)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax

from recmine.output import console, emit, err_console

app = typer.Typer(
    help=(
        "Graph pattern mining (g2miner): count and list patterns, motifs, frequent subgraphs.\n\n"
        "Graphs: SNAP/whitespace edge lists (.txt), Matrix Market (.mtx), GraphMiner binary folders, recmine .g2m\n"
        "(memory-mapped; `mine convert` writes one), .npz. Parsed and preprocessed forms are cached in\n"
        "$RECMINE_CACHE/g2miner_graphs (keyed by the input file's identity), so a second run only maps files.\n"
        "Patterns: a builtin name (triangle, 4-clique, diamond, 4-cycle, tailed-triangle, 3-star, 4-path, house, ...)\n"
        "or edges as text, e.g. \"0-1 1-2 2-0 2-3\" (labels: \"0-1 1-2 | 0:5\")."
    ),
    no_args_is_help=True,
)

GraphOpt = Annotated[Path, typer.Option("--graph", "-g", help="Graph file or GraphMiner folder.")]
PatternOpt = Annotated[str, typer.Option("--pattern", "-p", help="Builtin name or edge text like '0-1 1-2 2-0'.")]
EdgeInducedOpt = Annotated[bool, typer.Option("--edge-induced", help="Count edge-induced matches (default: vertex-induced).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


BIG_INPUT = 32 << 20  # inputs from this size on (bytes) get progress bars: they take seconds


def _size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0


class _Bars:
    """Progress bars on stderr for load, preprocess and count when the input is big and output is not JSON."""

    def __init__(self, on: bool) -> None:
        self.bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), TimeElapsedColumn(),
                            console=err_console) if on else None

    def __enter__(self) -> _Bars:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, name: str):
        """A progress(fraction) callback for a new bar (None when bars are off)."""
        if self.bar is None:
            return None
        bar, tid = self.bar, self.bar.add_task(name, total=1.0)
        return lambda f: bar.update(tid, completed=f)


def _load(path: Path, labels: Path | None = None, progress=None):
    from recmine.g2miner.graph import load_graph

    try:
        return load_graph(path, labels=labels, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("convert")
def convert_cmd(
    source: Annotated[Path, typer.Argument(help="Input graph: edge list, .mtx, GraphMiner folder, .g2m or .npz.")],
    target: Annotated[Path, typer.Argument(help="Output: a .g2m file, or a folder with --format graphminer.")],
    fmt: Annotated[str, typer.Option("--format", help="g2m (ours, memory-mapped) or graphminer (folder).")] = "g2m",
    labels: Annotated[Path | None, typer.Option("--labels", help="`vertex label` text file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a graph once in a binary form that later runs memory-map (no parsing).

    Examples:\n
      recmine mine convert edges.txt graph.g2m\n
      recmine mine convert edges.txt graph_dir --format graphminer --json
    """
    from recmine.g2miner.graph import save_graph

    t = time.perf_counter()
    with _Bars(not as_json and _size(source) >= BIG_INPUT) as bars:
        g = _load(source, labels, bars.task("load"))
    try:
        save_graph(g, target, fmt=fmt)
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    emit({"source": str(source), "target": str(target), "format": fmt, "vertices": g.num_vertices,
          "edges": g.num_edges, "seconds": time.perf_counter() - t}, as_json=as_json, title="g2miner convert")


@app.command("count")
def count_cmd(
    graph: GraphOpt,
    pattern: PatternOpt,
    edge_induced: EdgeInducedOpt = False,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="Worker threads (default: all cores).")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="`vertex label` text file.")] = None,
    show_code: Annotated[bool, typer.Option("--show-code", help="Print the search plan and generated kernel.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="local or ray.")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address HOST:PORT.")] = None,
    per_vertex: Annotated[Path | None, typer.Option(
        "--per-vertex", help="Also write each vertex's number of matches (int64 .npy, original ids) here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Count a pattern's matches, each subgraph once.

    Examples:\n
      recmine mine count --graph facebook_combined.txt --pattern 4-clique\n
      recmine mine count -g graph_dir/ -p "0-1 1-2 2-3 3-0" --edge-induced --json\n
      recmine mine count -g g.txt -p diamond --show-code\n
      recmine mine count -g g.g2m -p triangle --per-vertex triangles.npy
    """
    from recmine.g2miner.pattern import get_pattern
    from recmine.g2miner.runtime import count, count_detailed

    try:
        pat = get_pattern(pattern)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with _Bars(not as_json and _size(graph) >= BIG_INPUT) as bars:
        g = _load(graph, labels, bars.task("load"))
        try:
            if backend != "local":
                if per_vertex is not None:
                    raise ValueError("--per-vertex runs on the local backend")
                t = time.perf_counter()
                n = count(g, pat, induced=not edge_induced, backend=backend, address=address)
                result = {"count": n, "seconds": time.perf_counter() - t, "compile_seconds": 0.0}
            else:
                from recmine.g2miner.runtime import _plan_for, prepared_for

                prep_bar = bars.task("preprocess")
                prepared_for(g, _plan_for(pat, not edge_induced, g), threads, prep_bar)
                res = count_detailed(g, pat, not edge_induced, threads, progress=bars.task("count"),
                                     per_vertex=per_vertex is not None)
                result = {"count": res.count, "seconds": res.seconds, "compile_seconds": res.compile_seconds}
                if per_vertex is not None:
                    import numpy as np

                    np.save(per_vertex, res.per_vertex)
                if show_code and not as_json:
                    console.print(res.plan.describe())
                    console.print(Syntax(res.source, "python"))
        except (ValueError, ConnectionError, OSError) as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    if as_json:
        emit(result, as_json=True, title="count")
        return
    extra = {"per_vertex": str(per_vertex)} if per_vertex is not None else {}
    emit({"graph": str(graph), "pattern": pat.name or pat.text(),
          "semantics": "edge-induced" if edge_induced else "vertex-induced", **result, **extra}, as_json=False,
         title="g2miner count")


@app.command("list")
def list_cmd(
    graph: GraphOpt,
    pattern: PatternOpt,
    edge_induced: EdgeInducedOpt = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Stop after this many matches.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List matches (column i = graph vertex matched to pattern vertex i), streaming, up to --limit.

    Example:\n
      recmine mine list --graph g.txt --pattern triangle --limit 5 --json
    """
    from recmine.g2miner.pattern import get_pattern
    from recmine.g2miner.runtime import list_matches

    try:
        pat = get_pattern(pattern)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    g = _load(graph)
    rows: list[list[int]] = []
    for chunk in list_matches(g, pat, induced=not edge_induced, chunk_size=min(max(limit, 1), 65536)):
        rows.extend(chunk[: limit - len(rows)].tolist())
        if len(rows) >= limit:
            break
    emit({"pattern": pat.text(), "matches": [{f"v{i}": v for i, v in enumerate(r)} for r in rows]},
         as_json=as_json, title="g2miner matches")


@app.command("motifs")
def motifs_cmd(
    graph: GraphOpt,
    k: Annotated[int, typer.Option("-k", help="Motif size: 3, 4 or 5.")] = 3,
    method: Annotated[str, typer.Option("--method", help="auto, formula (k<=4) or esu.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="Worker threads (default: all cores).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Count every connected vertex-induced k-vertex motif (k = 3: 2 motifs, 4: 6, 5: 21).

    Examples:\n
      recmine mine motifs --graph facebook_combined.txt -k 4\n
      recmine mine motifs -g g.txt -k 5 --json
    """
    from recmine.g2miner.motifs import count_motifs

    g = _load(graph)
    try:
        t = time.perf_counter()
        res = count_motifs(g, k, method, threads)
        seconds = time.perf_counter() - t
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    rows = [{"name": m.name, "pattern": m.pattern.text(), "count": m.count} for m in res]
    if as_json:
        emit({"motifs": [{"pattern": r["pattern"], "name": r["name"], "count": r["count"]} for r in rows],
              "seconds": seconds}, as_json=True, title="motifs")
    else:
        emit({"graph": str(graph), "k": k, "seconds": seconds, "motifs": rows}, as_json=False, title="g2miner motifs")


@app.command("fsm")
def fsm_cmd(
    graph: GraphOpt,
    min_support: Annotated[int, typer.Option("--min-support", "-s", help="Minimum MNI support (> 0).")],
    max_edges: Annotated[int, typer.Option("--max-edges", "-e", help="Largest pattern size in edges.")] = 3,
    labels: Annotated[Path | None, typer.Option("--labels", help="`vertex label` text file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Frequent subgraph mining: connected labeled patterns whose MNI support reaches --min-support.

    Examples:\n
      recmine mine fsm --graph citeseer/ --min-support 300 --max-edges 3\n
      recmine mine fsm -g g.txt --labels labels.txt -s 50 --json
    """
    from recmine.g2miner.fsm import mine_frequent

    g = _load(graph, labels)
    try:
        t = time.perf_counter()
        res = mine_frequent(g, min_support, max_edges)
        seconds = time.perf_counter() - t
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    rows = [{"pattern": f.pattern.text(), "edges": f.pattern.num_edges, "support": f.support} for f in res]
    if as_json:
        emit({"patterns": [{"pattern": r["pattern"], "support": r["support"]} for r in rows], "seconds": seconds},
             as_json=True, title="fsm")
    else:
        emit({"graph": str(graph), "min_support": min_support, "max_edges": max_edges, "frequent": len(rows),
              "seconds": seconds, "patterns": rows}, as_json=False, title="g2miner fsm")
