"""g2miner benchmark: ours vs networkx and igraph, each engine alone in its own process, counts checked.

Usage: python benchmarks/g2miner_bench.py [--graphs fb,oregon,powerlaw] [--patterns ...] [--timeout 60] [--json]
Every engine configuration runs in a spawned child of its own (recmine.isolate.run_isolated) with its thread count
set: ours at 1 and 2 numba threads, networkx and igraph at 1 (single-threaded). Each peer uses its fastest call
(see recmine.g2miner.peers) and its count must equal ours, else the run stops with CountMismatch. Times are the
count call only: graph loading (and our once-per-graph degree ranking) excluded; ours is the median of --repeats
warm runs. Ratios: peer / ours at 1 thread (equal threads) and peer / ours at its best thread count (best vs best).
A peer cut off at --timeout shows '>' the limit. Counts: triangles and cliques as usual; 4-cycle, diamond and
tailed-triangle edge-induced (the GraphMiner convention behind ../shared/data/graphs/REFERENCE.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from recmine.datasets import power_law_graph
from recmine.g2miner import CSRGraph, load_graph
from recmine.g2miner.peers import compare_motifs, compare_patterns, fmt_seconds, ours_child, table_rows
from recmine.isolate import run_isolated
from recmine.output import rows_table

console = Console()
progress = Console(stderr=True)  # progress lines never mix into --json output
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "graphs"
PATTERNS = ["triangle", "4-clique", "5-clique", "4-cycle", "diamond", "tailed-triangle"]
INDUCED = {"triangle": True, "4-clique": True, "5-clique": True, "4-cycle": False, "diamond": False,
           "tailed-triangle": False}
THREADS = (1, 2)


def load_graphs(names: list[str]) -> dict[str, CSRGraph]:
    """The benchmark graphs (shared data where present, and a generated power-law graph)."""
    graphs: dict[str, CSRGraph] = {}
    for name in names:
        if name == "powerlaw":
            eg = power_law_graph(120_000, avg_degree=15.0, seed=1)
            graphs[name] = CSRGraph.from_edges(eg.src, eg.dst, num_vertices=eg.n_vertices)
            continue
        f = {"fb": "facebook_combined.txt", "oregon": "oregon1_010331.txt"}[name]
        if not (SHARED / f).exists():
            console.print(f"[yellow]skipping {name}: {SHARED / f} not found[/yellow]")
            continue
        graphs[name] = load_graph(SHARED / f)
    return graphs


def _title(what: str, gname: str, g: CSRGraph) -> str:
    return (f"{what} on {gname} (V={g.num_vertices:,}, E={g.num_edges:,})\ncount call only, each engine alone "
            f"in its process\nx = peer time / ours (1 thread | best)")


def section_patterns(args: argparse.Namespace, graphs: dict[str, CSRGraph]) -> list[dict]:
    """Pattern counting: ours at 1 and 2 threads vs networkx and igraph, counts checked."""
    rows: list[dict] = []
    for gname, g in graphs.items():
        src, dst = g.edges()
        res = compare_patterns(g.num_vertices, src, dst, [(p, INDUCED.get(p, True)) for p in args.patterns],
                               threads=THREADS, repeats=args.repeats, timeout=args.timeout,
                               on_row=lambda r, gname=gname: progress.print(
                                   f"  {gname} {r['pattern']} {r['engine']} ({r['threads']} thr): "
                                   + (f"{r['seconds']:.4g} s [{r['call']}]" if r["seconds"] is not None
                                      else f"cut off at {r['limit_s']:g} s"), markup=False))
        res = [{"graph": gname, "V": g.num_vertices, "E": g.num_edges, **r} for r in res]
        if not args.json:
            console.print(rows_table(table_rows(res, with_count=True), title=_title("g2miner patterns", gname, g)))
        rows += res
    return rows


def fsm_child(path: str, min_support: int, max_edges: int, repeats: int) -> dict:
    """Frequent subgraph mining on a labeled graph, timed in this process (ours only: no peer for MNI FSM)."""
    import numba

    from recmine.g2miner.fsm import mine_frequent

    g = load_graph(path)
    mine_frequent(g, min_support, max_edges)  # compile / load numba's cache
    times, found = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        found = len(mine_frequent(g, min_support, max_edges))
        times.append(time.perf_counter() - t)
    return {"patterns": found, "seconds": statistics.median(times), "threads": numba.get_num_threads()}


def section_apps(args: argparse.Namespace, graphs: dict[str, CSRGraph]) -> list[dict]:
    """Motif counting vs igraph motifs_randesu (every class's count checked), FSM on citeseer, and the Ray
    backend's overhead vs a local run at 2 threads."""
    rows: list[dict] = []
    for gname, g in graphs.items():
        if gname == "powerlaw":
            continue
        src, dst = g.edges()
        for k in (3, 4):
            res = compare_motifs(g.num_vertices, src, dst, k, threads=THREADS, repeats=args.repeats,
                                 timeout=args.timeout)
            res = [{"graph": gname, **r} for r in res]
            if not args.json:
                console.print(rows_table(table_rows(res), title=_title(f"{k}-motifs", gname, g)))
            rows += res
    rows += _fsm_and_ray(args, graphs)
    return rows


def _fsm_and_ray(args: argparse.Namespace, graphs: dict[str, CSRGraph]) -> list[dict]:
    rows: list[dict] = []
    cs = SHARED / "citeseer"
    if cs.exists():
        for t in THREADS:
            res = run_isolated(fsm_child, str(cs), 300, 3, args.repeats, threads=t)
            rows.append({"graph": "citeseer", "pattern": "FSM sup 300, <=3 edges", "engine": "g2miner",
                         "threads": t, "seconds": res["seconds"], "count": res["patterns"]})
            progress.print(f"  citeseer FSM ({t} thr): {res['patterns']} patterns in {res['seconds']:.4g} s")
    try:
        import ray

        from recmine.g2miner.distributed import count_ray
    except ImportError:
        ray = None
    if ray is not None:
        rows += _ray_rows(args, graphs, ray, count_ray)
    if not args.json and rows:
        console.print(rows_table([{"graph": r["graph"], "task": r["pattern"], "thr": str(r["threads"]),
                                   "time": fmt_seconds(r["seconds"]),
                                   "local 2 thr": fmt_seconds(r["local_2thr_s"]) if "local_2thr_s" in r else "",
                                   "found": f"{r['count']:,}" if "count" in r else ""} for r in rows],
                                 title="g2miner FSM (no peer) and Ray vs local"))
    return rows


def _ray_rows(args: argparse.Namespace, graphs: dict[str, CSRGraph], ray: Any, count_ray: Callable) -> list[dict]:
    rows: list[dict] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for gname, g in graphs.items():
            src, dst = g.edges()
            for pat, induced in [("triangle", True), ("4-clique", True), ("diamond", False)]:
                local = run_isolated(ours_child, g.num_vertices, src, dst, pat, induced, args.repeats, threads=2)
                count_ray(g, pat, induced, num_workers=2)  # warm the workers
                res = [count_ray(g, pat, induced, num_workers=2, return_stats=True) for _ in range(3)]
                if any(r.count != local["count"] for r in res):
                    raise RuntimeError(f"Ray count of {pat} on {gname} differs from the local count")
                ray_s = statistics.median(r.seconds for r in res)
                rows.append({"graph": gname, "pattern": f"ray 2 workers {pat}", "engine": "g2miner",
                             "threads": 2, "seconds": ray_s, "local_2thr_s": local["seconds"],
                             "overhead_s": ray_s - local["seconds"],
                             "worker_s": " / ".join(f"{s:.3f}" for s in res[-1].worker_seconds)})
                progress.print(f"  {gname} ray {pat}: {ray_s:.4g} s (local 2 thr {local['seconds']:.4g} s)")
    finally:
        ray.shutdown()
    return rows


SECTIONS: list[tuple[str, Callable[[argparse.Namespace, dict[str, CSRGraph]], list[dict]]]] = [
    ("patterns", section_patterns),
    ("apps", section_apps),
]


def main(argv: list[str] | None = None) -> None:
    """Run every section and print one table per section (or JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", default="fb,oregon,powerlaw")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sections", default=",".join(t for t, _ in SECTIONS))
    args = ap.parse_args(argv)
    args.patterns = args.patterns.split(",")
    out: dict = {"machine": f"{__import__('os').cpu_count()} vCPU", "date": time.strftime("%Y-%m-%d"),
                 "threads": {"g2miner": list(THREADS), "networkx": 1, "igraph": 1},
                 "isolation": "each engine configuration in its own spawned process (recmine.isolate.run_isolated)"}
    graphs = load_graphs(args.graphs.split(","))
    for title, fn in SECTIONS:
        if title in args.sections.split(","):
            out[title] = fn(args, graphs)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
