"""g2miner benchmark: our warm kernel time vs networkx and igraph, measured in the same run, with ratios.

Usage: python benchmarks/g2miner_bench.py [--graphs fb,oregon,powerlaw] [--patterns ...] [--timeout 60] [--json]
Peers run in a subprocess each, cut off at --timeout seconds (shown as '>T'). Our time is the median of --repeats
warm runs (compile time in its own column). Counts: triangles and cliques as usual; 4-cycle, diamond and
tailed-triangle edge-induced (the GraphMiner convention behind ../shared/data/graphs/REFERENCE.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console

from recmine.datasets import power_law_graph
from recmine.g2miner import CSRGraph, count_detailed, get_pattern, load_graph
from recmine.output import rows_table

console = Console(width=220)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "graphs"
PATTERNS = ["triangle", "4-clique", "5-clique", "4-cycle", "diamond", "tailed-triangle"]
INDUCED = {"triangle": True, "4-clique": True, "5-clique": True, "4-cycle": False, "diamond": False,
           "tailed-triangle": False}

PEER_CODE = {
    "networkx": r'''
import sys, time, json, networkx as nx
from networkx.algorithms import isomorphism as iso
path, pattern, edges = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
G = nx.read_edgelist(path, nodetype=int)
P = nx.Graph(edges)
t = time.perf_counter()
if pattern == "triangle":
    c = sum(nx.triangles(G).values()) // 3
elif pattern.endswith("-clique"):
    k = int(pattern[0]); c = 0
    for q in nx.enumerate_all_cliques(G):
        if len(q) > k: break
        c += len(q) == k
else:
    aut = sum(1 for _ in iso.GraphMatcher(P, P).isomorphisms_iter())
    c = sum(1 for _ in iso.GraphMatcher(G, P).subgraph_monomorphisms_iter()) // aut
print(json.dumps({"count": c, "seconds": time.perf_counter() - t}))
''',
    "igraph": r'''
import sys, time, json, igraph as ig
path, pattern, edges = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
G = ig.Graph.Read_Edgelist(path, directed=False).simplify()
P = ig.Graph(edges=edges)
t = time.perf_counter()
if pattern == "triangle":
    c = len(G.list_triangles())
elif pattern.endswith("-clique"):
    k = int(pattern[0]); c = len(G.cliques(k, k))
else:
    aut = P.count_automorphisms_vf2() if hasattr(P, "count_automorphisms_vf2") else P.count_isomorphisms_vf2(P)
    c = G.count_subisomorphisms_vf2(P) // aut
print(json.dumps({"count": c, "seconds": time.perf_counter() - t}))
''',
}


def run_peer(tool: str, path: Path, pattern: str, timeout: float) -> tuple[float | None, int | None]:
    """Time a peer in its own process; (seconds, count) or (None, None) when cut off or failed."""
    edges = [list(e) for e in get_pattern(pattern).edges]
    try:
        out = subprocess.run([sys.executable, "-c", PEER_CODE[tool], str(path), pattern, json.dumps(edges)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None
    if out.returncode != 0:
        return None, None
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return float(res["seconds"]), int(res["count"])


def load_graphs(names: list[str], tmp: Path) -> dict[str, tuple[CSRGraph, Path]]:
    """The benchmark graphs with a plain 0-based edge list for the peers."""
    graphs: dict[str, tuple[CSRGraph, Path]] = {}
    for name in names:
        if name == "powerlaw":
            eg = power_law_graph(120_000, avg_degree=15.0, seed=1)
            g = CSRGraph.from_edges(eg.src, eg.dst, num_vertices=eg.n_vertices)
        else:
            f = {"fb": "facebook_combined.txt", "oregon": "oregon1_010331.txt"}[name]
            if not (SHARED / f).exists():
                console.print(f"[yellow]skipping {name}: {SHARED / f} not found[/yellow]")
                continue
            g = load_graph(SHARED / f)
        path = tmp / f"{name}.el"
        src, dst = g.edges()
        np.savetxt(path, np.stack([src, dst], axis=1), fmt="%d")
        graphs[name] = (g, path)
    return graphs


def section_patterns(args: argparse.Namespace, graphs: dict[str, tuple[CSRGraph, Path]]) -> list[dict]:
    """Pattern counting: ours (warm median) vs networkx and igraph."""
    rows = []
    for gname, (g, path) in graphs.items():
        for pat in args.patterns:
            induced = INDUCED.get(pat, True)
            first = count_detailed(g, pat, induced)
            times = [count_detailed(g, pat, induced).seconds for _ in range(args.repeats)]
            ours = statistics.median(times)
            row = {"graph": gname, "V": g.num_vertices, "E": g.num_edges, "pattern": pat,
                   "count": first.count, "ours_s": ours, "compile_s": first.compile_seconds}
            for tool in ("networkx", "igraph"):
                t, c = run_peer(tool, path, pat, args.timeout)
                row[f"{tool}_s"] = f"{t:.4g}" if t is not None else f">{args.timeout:g}"
                row[f"{tool}/ours"] = f"{t / ours:.1f}x" if t is not None else f">{args.timeout / ours:.0f}x"
                if c is not None and c != first.count:
                    row[f"{tool}_count"] = c  # shown only when it disagrees
            rows.append(row)
            console.print(f"  {gname} {pat}: {first.count:,} in {ours:.4f}s")
    return rows


IGRAPH_MOTIFS = r'''
import sys, time, json, igraph as ig
G = ig.Graph.Read_Edgelist(sys.argv[1], directed=False).simplify()
t = time.perf_counter()
G.motifs_randesu(size=int(sys.argv[2]))
print(json.dumps({"count": 0, "seconds": time.perf_counter() - t}))
'''


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm (compile / cache load)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def section_apps(args: argparse.Namespace, graphs: dict[str, tuple[CSRGraph, Path]]) -> list[dict]:
    """Motif counting vs igraph motifs_randesu, FSM on citeseer, and the Ray backend's overhead vs local."""
    from recmine.g2miner.fsm import mine_frequent
    from recmine.g2miner.motifs import count_motifs

    rows: list[dict] = []
    for gname, (g, path) in graphs.items():
        if gname == "powerlaw":
            continue
        for k in (3, 4):
            ours = _median_time(lambda g=g, k=k: count_motifs(g, k), args.repeats)
            try:
                out = subprocess.run([sys.executable, "-c", IGRAPH_MOTIFS, str(path), str(k)], capture_output=True,
                                     text=True, timeout=args.timeout)
                peer = float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
            except (subprocess.TimeoutExpired, IndexError, ValueError):
                peer = None
            rows.append({"task": f"{k}-motifs", "graph": gname, "ours_s": ours,
                         "peer": "igraph motifs_randesu",
                         "peer_s": f"{peer:.4g}" if peer is not None else f">{args.timeout:g}",
                         "peer/ours": f"{peer / ours:.1f}x" if peer is not None else f">{args.timeout / ours:.0f}x"})
            console.print(f"  {gname} {k}-motifs: {ours:.4f}s")
    cs = SHARED / "citeseer"
    if cs.exists():
        cg = load_graph(cs)
        t = _median_time(lambda: mine_frequent(cg, 300, 3), args.repeats)
        rows.append({"task": "fsm support=300 edges<=3", "graph": "citeseer", "ours_s": t,
                     "peer": f"{len(mine_frequent(cg, 300, 3))} patterns"})
    try:
        import ray

        from recmine.g2miner.distributed import count_ray
    except ImportError:
        return rows
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for gname, (g, _) in graphs.items():
            for pat, induced in [("triangle", True), ("4-clique", True), ("diamond", False)]:
                local = _median_time(lambda g=g, p=pat, i=induced: count_detailed(g, p, i), args.repeats)
                count_ray(g, pat, induced, num_workers=2)  # warm the workers
                res = [count_ray(g, pat, induced, num_workers=2, return_stats=True) for _ in range(3)]
                ray_s = statistics.median(r.seconds for r in res)
                rows.append({"task": f"ray 2 workers: {pat}", "graph": gname, "ours_s": ray_s, "peer": "local",
                             "peer_s": f"{local:.4g}", "overhead_s": ray_s - local,
                             "worker_s": " / ".join(f"{s:.3f}" for s in res[-1].worker_seconds)})
    finally:
        ray.shutdown()
    return rows


SECTIONS: list[tuple[str, Callable[[argparse.Namespace, dict[str, tuple[CSRGraph, Path]]], list[dict]]]] = [
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
    out = {"machine": f"{__import__('os').cpu_count()} vCPU", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = load_graphs(args.graphs.split(","), Path(tmp))
        for title, fn in SECTIONS:
            if title not in args.sections.split(","):
                continue
            rows = fn(args, graphs)
            out[title] = rows
            if not args.json:
                console.print(rows_table(rows, title=f"g2miner: {title}"))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
