"""Fair, checked comparisons with the peers (networkx, igraph) for the benchmark and the demo; never the engine.

Every engine configuration runs alone in a spawned child (`recmine.isolate.run_isolated`) with its thread count
set: ours at each requested numba thread count, each peer at 1 thread (both are single-threaded). Each peer goes
through its fastest call, measured on the benchmark graphs: igraph `list_triangles` (3x faster than
`cliques(3, 3)`), `cliques(k, k)`, `count_subisomorphisms_vf2` for other edge-induced patterns (LAD and
`motifs_randesu(size=4)` were far slower), `motifs_randesu` for motif counts; networkx `triangles`,
`enumerate_all_cliques` cut at size k, VF2 `GraphMatcher`. Only the count call is timed (graph loading is not),
and every peer's count must equal ours: a difference raises `CountMismatch`."""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recmine.g2miner.pattern import Pattern, connected_motifs, get_pattern
from recmine.isolate import run_isolated

PEERS = ("networkx", "igraph")


class CountMismatch(RuntimeError):
    """A peer's count differs from ours: one of the two is wrong, so no timing of either may be reported."""


def _median_run(fn: Callable[[], tuple[Any, float]], repeats: int, budget_s: float = 1.0) -> tuple[Any, float]:
    """(result, median seconds) over runs of fn, which returns (result, seconds): at least once, and again while
    the runs so far took under budget_s, up to max(repeats, 25) runs (fast calls get a stable median, calls of
    many seconds run once). Every run must give the same result."""
    times: list[float] = []
    result = None
    while not times or (sum(times) < budget_s and len(times) < max(repeats, 25)):
        out, sec = fn()
        times.append(sec)
        if len(times) > 1 and out != result:
            raise RuntimeError(f"repeated runs disagree: {result!r} then {out!r}")
        result = out
    return result, statistics.median(times)


def _median_call(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """_median_run of a plain call, timed around the call alone."""
    def timed() -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    return _median_run(timed, repeats)


def _edge_pattern(pattern: str) -> Pattern:
    p = get_pattern(pattern)
    if p.labels is not None:
        raise ValueError(f"the peers are compared on unlabeled patterns only, got {p.text()!r}")
    return p


def ours_child(n: int, src: np.ndarray, dst: np.ndarray, pattern: str, induced: bool, repeats: int) -> dict:
    """Our count in this process: the first run compiles (or loads numba's cache), then the median warm run."""
    import numba

    from recmine.g2miner.graph import CSRGraph
    from recmine.g2miner.runtime import count_detailed

    g = CSRGraph.from_edges(src, dst, num_vertices=n)
    first = count_detailed(g, pattern, induced)

    def run() -> tuple[int, float]:
        res = count_detailed(g, pattern, induced)
        return res.count, res.seconds  # the count itself: plan lookup and compile (done by `first`) excluded

    c, sec = _median_run(run, repeats)
    if c != first.count:
        raise RuntimeError(f"g2miner gave different {pattern} counts on repeated runs")
    return {"count": c, "seconds": sec, "compile_s": first.compile_seconds, "threads": numba.get_num_threads(),
            "call": "count_detailed"}


def igraph_child(n: int, src: np.ndarray, dst: np.ndarray, pattern: str, induced: bool, repeats: int) -> dict:
    """igraph's count through its fastest call for the pattern (the graph is built from one numpy array)."""
    import igraph as ig

    p = _edge_pattern(pattern)
    G = ig.Graph(n=n, edges=np.stack([src, dst], axis=1))
    k = p.num_vertices
    if p.is_clique() and k == 3:
        call, fn = "list_triangles", lambda: len(G.list_triangles())
    elif p.is_clique():
        call, fn = f"cliques({k}, {k})", lambda: len(G.cliques(k, k))
    else:
        P = ig.Graph(n=k, edges=list(p.edges))
        aut = P.count_automorphisms_vf2()
        if induced:
            call, fn = "get_subisomorphisms_lad(induced)", lambda: len(G.get_subisomorphisms_lad(P, induced=True)) // aut
        else:
            call, fn = "count_subisomorphisms_vf2", lambda: G.count_subisomorphisms_vf2(P) // aut
    c, sec = _median_call(fn, repeats)
    return {"count": int(c), "seconds": sec, "threads": 1, "call": call}


def networkx_child(n: int, src: np.ndarray, dst: np.ndarray, pattern: str, induced: bool, repeats: int) -> dict:
    """networkx's count through its fastest function for the pattern."""
    import networkx as nx
    from networkx.algorithms import isomorphism as iso

    p = _edge_pattern(pattern)
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    k = p.num_vertices

    def cliques() -> int:
        c = 0
        for q in nx.enumerate_all_cliques(G):
            if len(q) > k:
                break
            c += len(q) == k
        return c

    def matcher() -> int:
        P = nx.Graph(list(p.edges))
        aut = sum(1 for _ in iso.GraphMatcher(P, P).isomorphisms_iter())
        gm = iso.GraphMatcher(G, P)
        it = gm.subgraph_isomorphisms_iter() if induced else gm.subgraph_monomorphisms_iter()
        return sum(1 for _ in it) // aut

    if p.is_clique() and k == 3:
        call, fn = "triangles", lambda: sum(nx.triangles(G).values()) // 3
    elif p.is_clique():
        call, fn = "enumerate_all_cliques", cliques
    else:
        call, fn = "GraphMatcher (VF2)", matcher
    c, sec = _median_call(fn, repeats)
    return {"count": int(c), "seconds": sec, "threads": 1, "call": call}


CHILDREN: dict[str, Callable[..., dict]] = {"networkx": networkx_child, "igraph": igraph_child}


def peer_available(peer: str) -> bool:
    """True when the peer's package is importable here (peers are optional: extra `bench`)."""
    return importlib.util.find_spec(peer) is not None


def _ratio(peer_s: float | None, ours_s: float) -> float | None:
    return peer_s / ours_s if peer_s is not None and ours_s > 0 else None


def _compare(label: str, children: dict[str, Callable[..., dict]], args: tuple, threads: Sequence[int],
             timeout: float | None, on_row: Callable[[dict], None] | None) -> list[dict]:
    """Run ours at each thread count and each installed peer at 1 thread, each in its own process; check every
    peer's count against ours (CountMismatch) and attach both ratios to the peer rows."""
    rows: list[dict] = []
    for t in sorted(set(threads)):
        res = run_isolated(children["g2miner"], *args, threads=t)
        rows.append({"pattern": label, "engine": "g2miner", **res, "threads": t, "numba_threads": res["threads"]})
        if on_row:
            on_row(rows[-1])
    eq, best = rows[0], min(rows, key=lambda r: r["seconds"])
    for peer, child in children.items():
        if peer == "g2miner" or not peer_available(peer):
            continue
        try:
            res = run_isolated(child, *args, threads=1, timeout=timeout)
        except TimeoutError:
            res = {"count": None, "seconds": None, "threads": 1, "call": "cut off", "limit_s": timeout}
        if res["count"] is not None and res["count"] != eq["count"]:
            raise CountMismatch(f"{peer} ({res['call']}) counts {res['count']} for {label}, g2miner {eq['count']}")
        row = {"pattern": label, "engine": peer, **res,
               "x_eq": _ratio(res["seconds"], eq["seconds"]), "x_best": _ratio(res["seconds"], best["seconds"])}
        if res["seconds"] is None and timeout is not None:  # cut off: at least this much slower
            row["x_eq_min"], row["x_best_min"] = timeout / eq["seconds"], timeout / best["seconds"]
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def compare_patterns(n: int, src: np.ndarray, dst: np.ndarray, patterns: Sequence[tuple[str, bool]],
                     threads: Sequence[int] = (1, 2), peers: Sequence[str] = PEERS, repeats: int = 3,
                     timeout: float | None = None,
                     on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Time ours and each peer on every (pattern, induced), each engine configuration in its own process.

    Parameters
    ----------
    n, src, dst
        The graph: n vertices, undirected edges (src[i], dst[i]).
    patterns
        (pattern name or text, vertex-induced?) pairs.
    threads
        Our numba thread counts, one child each; the smallest is compared with the single-threaded peers.
    peers
        Peers to run (those not installed are left out).
    repeats
        Warm runs whose median is reported (peers repeat only while the runs so far took under a second).
    timeout
        Seconds a peer may take per pattern; it is then killed and shown as slower than that (never dropped).
    on_row
        Called with each row as it is measured (progress output).

    Returns
    -------
    One row per (pattern, engine, threads): count, seconds (None when cut off), call, and for peers `x_eq`
    (peer / ours at equal threads) and `x_best` (peer / ours at our best thread count).

    Raises
    ------
    CountMismatch
        A peer's count differs from ours.
    """
    children = {"g2miner": ours_child, **{p: CHILDREN[p] for p in peers}}
    rows: list[dict] = []
    for pattern, induced in patterns:
        rows += [{**r, "induced": induced}
                 for r in _compare(pattern, children, (n, src, dst, pattern, induced, repeats), threads, timeout,
                                   on_row)]
    return rows


def _sig(x: float) -> str:
    """3 significant digits without exponents: 0.0123, 4.56, 789, 12,300."""
    return f"{float(f'{x:.3g}'):,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def fmt_seconds(sec: float) -> str:
    """A duration with its unit and 3 significant digits (ms below a second)."""
    return f"{_sig(sec * 1e3)} ms" if sec < 0.9995 else f"{_sig(sec)} s"


def table_rows(rows: Sequence[dict], with_count: bool = False) -> list[dict[str, str]]:
    """Display rows, 6 narrow columns: pattern, engine, threads, count-call time, peer/ours at equal threads and
    peer/ours best against best (a peer cut off shows '>' its limit); with_count adds the count."""
    out = []
    for r in rows:
        cnt = {"count": f"{r['count']:,}" if isinstance(r["count"], int) else "-"} if with_count else {}
        cut = r["seconds"] is None
        if r["engine"] == "g2miner":
            xe = xb = ""
        elif cut:
            xe = f">{_sig(r['x_eq_min'])}x" if "x_eq_min" in r else "?"
            xb = f">{_sig(r['x_best_min'])}x" if "x_best_min" in r else "?"
        else:
            xe, xb = f"{_sig(r['x_eq'])}x", f"{_sig(r['x_best'])}x"
        out.append({"pattern": r["pattern"], **cnt, "engine": r["engine"], "thr": str(r["threads"]),
                    "time": f">{fmt_seconds(r['limit_s'])}" if cut else fmt_seconds(r["seconds"]), "x 1 thr": xe, "x best": xb})
    return out


def _motif_names(k: int) -> dict[str, str]:
    return {str(m.canonical()): m.name or m.text() for m in connected_motifs(k)}


def motifs_ours_child(n: int, src: np.ndarray, dst: np.ndarray, k: int, repeats: int) -> dict:
    """Our k-motif counts (motif name -> count) and the median time of count_motifs."""
    import numba

    from recmine.g2miner.graph import CSRGraph
    from recmine.g2miner.motifs import count_motifs

    g = CSRGraph.from_edges(src, dst, num_vertices=n)
    count_motifs(g, k)  # compile / load numba's cache
    res, sec = _median_call(lambda: {m.name: m.count for m in count_motifs(g, k)}, repeats)
    return {"count": res, "seconds": sec, "threads": numba.get_num_threads(), "call": "count_motifs"}


def motifs_igraph_child(n: int, src: np.ndarray, dst: np.ndarray, k: int, repeats: int) -> dict:
    """igraph's k-motif counts via motifs_randesu, keyed like ours (each isoclass named by its canonical form)."""
    import igraph as ig

    G = ig.Graph(n=n, edges=np.stack([src, dst], axis=1))
    # disconnected classes come back as NaN (not counted): -1 here, so repeated runs compare equal
    res, sec = _median_call(lambda: [-1 if math.isnan(c) else int(c) for c in G.motifs_randesu(size=k)], repeats)
    names = _motif_names(k)
    counts = {names[str(Pattern(k, tuple(ig.Graph.Isoclass(k, cls).get_edgelist())).canonical())]: c
              for cls, c in enumerate(res) if c >= 0}
    return {"count": counts, "seconds": sec, "threads": 1, "call": "motifs_randesu"}


def compare_motifs(n: int, src: np.ndarray, dst: np.ndarray, k: int, threads: Sequence[int] = (1, 2),
                   repeats: int = 3, timeout: float | None = None) -> list[dict]:
    """k-motif counting: ours at each thread count and igraph, each in its own process, every motif's count
    checked (CountMismatch on any difference). Rows as in `compare_patterns`, pattern 'k-motifs'."""
    children = {"g2miner": motifs_ours_child, "igraph": motifs_igraph_child}
    return _compare(f"{k}-motifs", children, (n, src, dst, k, repeats), threads, timeout, None)
