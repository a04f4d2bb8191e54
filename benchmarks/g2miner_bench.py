"""g2miner benchmark: ours vs networkx and igraph, each engine alone in its own process, counts checked.

Usage: python benchmarks/g2miner_bench.py [--graphs fb,oregon,powerlaw] [--patterns ...] [--timeout 60] [--json]
       python benchmarks/g2miner_bench.py --scale [--scale-graphs 10m,100m] [--graphminer DIR] [--json]
Every engine configuration runs in a spawned child of its own (recmine.isolate.run_isolated) with its thread count
set: ours at 1 and 2 numba threads, networkx and igraph at 1 (single-threaded). Each peer uses its fastest call
(see recmine.g2miner.peers) and its count must equal ours, else the run stops with CountMismatch. Times are the
count call only: graph loading (and our once-per-graph degree ranking) excluded; ours is the median of --repeats
warm runs. Ratios: peer / ours at 1 thread (equal threads) and peer / ours at its best thread count (best vs best).
A peer cut off at --timeout shows '>' the limit. Counts: triangles and cliques as usual; 4-cycle, diamond and
tailed-triangle edge-induced (the GraphMiner convention behind ../shared/data/graphs/REFERENCE.md).

--scale: graphs of the size users bring (not a timed test). The 10M-edge Chung-Lu graph of issue 15 (n = 10^6,
w_i ~ i^-0.6, 10^7 endpoint draws per side, seed 1) and a 100M-edge one of the same family (n = 10^7, drawn in
chunks) are generated into /tmp (never committed; the 100M one only under the bigmem lock, see --scale-graphs) as
GraphMiner binary folders, the 10M one also as an edge-list text file. Every run is a fresh process: load,
preprocess (degree ranking + orientation / ranked CSR) and count seconds, peak RSS, for triangle, 4-clique, diamond
(edge-induced) and 4-motifs, at 2 threads; the whole run of `recmine mine count` from process start with the binary
input (kernel cache warm) without and with the cached preprocessed form; text input load. With --graphminer DIR
(binaries tc, clique, diamond, motif built from chenxuhao/GraphMiner's CPU code), each runs in its own process with
OMP_NUM_THREADS=2 and its count is checked against ours; without it the issue's GraphMiner figures are printed,
labelled as reference figures not measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
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


# ------------------------------------------------------------------------------------------------ --scale section
SCALE_DIR = Path(os.environ.get("G2M_SCALE_DIR", "/tmp/recmine_g2miner_scale"))
ISSUE_GRAPHMINER = {"triangle": 1.06, "4-clique": 1.16, "whole_run": 1.23, "peak_mb": 144}  # issue 15, 2 threads
SCALE_PATTERNS = [("triangle", True), ("4-clique", True), ("diamond", False), ("4-motifs", True)]


def chung_lu(n: int, draws: int, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Issue 15's Chung-Lu family: w_i ~ i^-0.6, `draws` endpoint pairs by rng.choice(n, p=w), a random
    permutation of the ids (drawn after the endpoints, as in the issue), int32 endpoints; drawn `chunk` at a time
    (chunk = draws reproduces the issue's graph exactly)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -0.6
    w /= w.sum()
    rng = np.random.default_rng(seed)
    u = np.empty(draws, np.int32)
    v = np.empty(draws, np.int32)
    if chunk >= draws:
        u[:] = rng.choice(n, draws, p=w)
        v[:] = rng.choice(n, draws, p=w)
    else:
        for lo in range(0, draws, chunk):
            hi = min(lo + chunk, draws)
            u[lo:hi] = rng.choice(n, hi - lo, p=w)
            v[lo:hi] = rng.choice(n, hi - lo, p=w)
    perm = rng.permutation(n).astype(np.int32)
    return perm[u], perm[v]


@njit(cache=True, nogil=True)
def _format_pairs(u, v, keep):
    """`u v` lines (ascii) of the kept pairs, into one byte buffer."""
    out = np.empty(keep.sum() * 22, np.uint8)
    p = 0
    digits = np.empty(12, np.uint8)
    for i in range(u.shape[0]):
        if not keep[i]:
            continue
        for col in range(2):
            x = u[i] if col == 0 else v[i]
            k = 0
            while True:
                digits[k] = 48 + x % 10
                x //= 10
                k += 1
                if x == 0:
                    break
            for j in range(k - 1, -1, -1):
                out[p] = digits[j]
                p += 1
            out[p] = 32 if col == 0 else 10
            p += 1
    return out[:p]


def make_scale_graph(name: str) -> dict[str, Any]:
    """Generate (once) the named scale graph as a GraphMiner folder (and, for 10m, an edge-list text file)."""
    from recmine.g2miner.storage import csr_from_pairs, write_graphminer

    n, draws, chunk = {"10m": (1_000_000, 10_000_000, 10_000_000), "100m": (10_000_000, 100_000_000, 10_000_000)}[name]
    folder = SCALE_DIR / f"chung_lu_{name}"
    text = SCALE_DIR / f"chung_lu_{name}.txt"
    if not (folder / "graph.meta.txt").exists():
        SCALE_DIR.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        u, v = chung_lu(n, draws, 1, chunk)
        if name == "10m":
            text.write_bytes(_format_pairs(u, v, u < v).tobytes() + _format_pairs(v, u, v < u).tobytes())
        indptr, indices = csr_from_pairs(u, v, n)
        del u, v
        write_graphminer(folder, indptr, indices)
        progress.print(f"  generated {folder} ({indices.shape[0]:,} directed edges) in {time.perf_counter() - t:.1f} s")
    return {"name": name, "folder": folder, "text": text if text.exists() else None}


def peak_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's peak from before exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_child(path: str, pattern: str, induced: bool, threads: int, fresh: bool) -> dict:
    """One run in this (fresh) process: load, preprocess, count seconds and this process's peak RSS."""
    import shutil

    from recmine.g2miner.graph import load_graph
    from recmine.g2miner.motifs import count_motifs
    from recmine.g2miner.runtime import _plan_for, count_detailed, prepared_for
    from recmine.g2miner.storage import identity_dir

    if fresh:
        shutil.rmtree(identity_dir(Path(path)), ignore_errors=True)
    t0 = time.perf_counter()
    g = load_graph(path, threads=threads)
    t1 = time.perf_counter()
    if pattern == "4-motifs":
        g.prepared("ranked", threads)
        g.prepared("dag", threads)
        t2 = time.perf_counter()
        res = count_motifs(g, 4, threads=threads)
        result = {m.name: m.count for m in res}
        count_s, compile_s = time.perf_counter() - t2, 0.0
    else:
        prepared_for(g, _plan_for(pattern, induced, g), threads)
        t2 = time.perf_counter()
        r = count_detailed(g, pattern, induced, threads)
        result, count_s, compile_s = r.count, r.seconds, r.compile_seconds
    return {"count": result, "load_s": t1 - t0, "preprocess_s": t2 - t1, "count_s": count_s,
            "compile_s": compile_s, "peak_mb": peak_mb()}


def _timed_process(cmd: list[str], env: dict[str, str] | None = None,
                   timeout: float | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds from process start, peak RSS MB) of a command, via /usr/bin/time; raises
    subprocess.TimeoutExpired past `timeout` seconds (the process is killed)."""
    import signal
    import subprocess

    full = ["/usr/bin/time", "-f", "%e %M", *cmd]
    t = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the timed command too, not only /usr/bin/time
        proc.communicate()
        raise
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr.strip()[-500:]}")
    rss_kb = int(stderr.strip().splitlines()[-1].split()[1])
    return stdout, wall, rss_kb / 1024


GM_CALLS = {"triangle": ("tc", []), "4-clique": ("clique", ["4"]), "diamond": ("diamond", []),
            "4-motifs": ("motif", ["4"])}
GM_MOTIF_ORDER = ["3-star", "4-path", "tailed-triangle", "4-cycle", "diamond", "4-clique"]


def graphminer_run(gm_dir: Path, folder: Path, pattern: str, threads: int, timeout: float) -> dict | None:
    """One GraphMiner binary in its own process: kernel seconds it prints, count, wall, peak RSS (None when cut off
    at `timeout` seconds)."""
    import subprocess

    exe, extra = GM_CALLS[pattern]
    try:
        out, wall, rss = _timed_process([str(gm_dir / exe), str(folder / "graph"), *extra],
                                        {"OMP_NUM_THREADS": str(threads)}, timeout)
    except subprocess.TimeoutExpired:
        return None
    kernel = float(re.findall(r"runtime[^=]*= ([0-9.eE+-]+)", out)[-1])
    if pattern == "4-motifs":
        vals = [int(x) for x in re.findall(r"pattern \d+: (\d+)", out)]
        found: Any = dict(zip(GM_MOTIF_ORDER, vals, strict=True))
    else:
        found = int(re.findall(r"(?:total_num_triangles|num_4-cliques|total_num) = (\d+)", out)[-1])
    return {"count": found, "kernel_s": kernel, "wall_s": wall, "peak_mb": rss}


def _paired(args: argparse.Namespace, gm_dir: Path, gm_folder: Path, folder: str, pattern: str, induced: bool,
            threads: int, want: Any) -> dict:
    """GraphMiner and ours (cached preprocessing, warm kernels) alternately, --pairs times, each in its own process:
    median kernel seconds of each and the median of the pairwise ratios (robust to a machine whose load drifts)."""
    ours_s, gm_s, ratios = [], [], []
    for _ in range(args.pairs):
        gm = graphminer_run(gm_dir, gm_folder, pattern, threads, args.gm_timeout)
        if gm is None:
            return {"gm_kernel_s": None, "gm_cut_off_s": args.gm_timeout}
        if gm["count"] != want:
            raise RuntimeError(f"GraphMiner's {pattern} count {gm['count']} != ours {want}")
        ours = run_isolated(scale_child, folder, pattern, induced, threads, False, threads=threads)
        ours_s.append(ours["count_s"])
        gm_s.append(gm["kernel_s"])
        ratios.append(gm["kernel_s"] / ours["count_s"])
    return {"kernel_s": statistics.median(ours_s), "gm_kernel_s": statistics.median(gm_s),
            "x_kernel": statistics.median(ratios), "gm_peak_mb": gm["peak_mb"], "gm_wall_s": gm["wall_s"]}


def section_scale(args: argparse.Namespace) -> list[dict]:
    """Issue 15's scale table: ours (fresh process per run) vs GraphMiner's C++ (built, or its reference figures)."""
    rows: list[dict] = []
    gm_dir = Path(args.graphminer) if args.graphminer else None
    threads = 2
    for name in args.scale_graphs.split(","):
        info = make_scale_graph(name)
        folder = str(info["folder"])
        for pattern, induced in SCALE_PATTERNS if name == "10m" else SCALE_PATTERNS[:1]:
            run_isolated(scale_child, folder, pattern, induced, threads, False, threads=threads)  # warm kernels
            first = run_isolated(scale_child, folder, pattern, induced, threads, True, threads=threads)
            second = run_isolated(scale_child, folder, pattern, induced, threads, False, threads=threads)
            row = {"graph": name, "pattern": pattern, "threads": threads, "ours_count": first["count"],
                   "load_s": first["load_s"], "preprocess_s": first["preprocess_s"], "kernel_s": second["count_s"],
                   "peak_mb_first": first["peak_mb"], "peak_mb_cached": second["peak_mb"],
                   "cached_load_s": second["load_s"] + second["preprocess_s"]}
            if first["count"] != second["count"]:
                raise RuntimeError(f"{pattern} on {name}: counts differ between runs")
            if gm_dir is not None:
                row.update(_paired(args, gm_dir, info["folder"], folder, pattern, induced, threads, first["count"]))
            rows.append(row)
            gm_txt = ("" if gm_dir is None else f", GraphMiner cut off at {args.gm_timeout:g} s"
                      if row.get("gm_kernel_s") is None else
                      f", GraphMiner kernel {row['gm_kernel_s']:.3g} s (median GraphMiner/ours "
                      f"{row['x_kernel']:.3g}x over {args.pairs} pairs)")
            progress.print(f"  {name} {pattern}: kernel {row['kernel_s']:.3g} s, preprocess {row['preprocess_s']:.3g} s,"
                           f" peak {row['peak_mb_first']:.0f}/{row['peak_mb_cached']:.0f} MB{gm_txt}", markup=False)
        rows += _whole_runs(name, folder, info["text"], "triangle", threads, gm_dir, info["folder"])
    if not args.json:
        _print_scale(rows, gm_dir is not None)
    return rows


def _whole_runs(name: str, folder: str, text: Path | None, pattern: str, threads: int, gm_dir: Path | None,
                gm_folder: Path) -> list[dict]:
    """`recmine mine count` from process start (binary input, warm kernels): without and with the cached
    preprocessed form; GraphMiner's whole process; text input load."""
    import shutil

    from recmine.g2miner.storage import identity_dir

    cli = [sys.executable, "-m", "recmine.cli", "mine", "count", "-g", folder, "-p", pattern, "-t", str(threads),
           "--json"]
    env = {"NUMBA_NUM_THREADS": str(threads)}
    out: list[dict] = []
    shutil.rmtree(identity_dir(Path(folder)), ignore_errors=True)
    for label in ("whole run, binary input, first (preprocesses)", "whole run, binary input, cached preprocessing"):
        stdout, wall, rss = _timed_process(cli, env)
        out.append({"graph": name, "pattern": f"{pattern}: {label}", "threads": threads, "wall_s": wall,
                    "peak_mb": rss, "ours_count": json.loads(stdout.strip().splitlines()[-1])["count"]})
    if gm_dir is not None:
        exe, extra = GM_CALLS[pattern]
        _, wall, rss = _timed_process([str(gm_dir / exe), str(gm_folder / "graph"), *extra],
                                      {"OMP_NUM_THREADS": str(threads)})
        out.append({"graph": name, "pattern": f"{pattern}: GraphMiner whole process", "threads": threads,
                    "wall_s": wall, "peak_mb": rss})
    if text is not None:
        res = run_isolated(_text_load_child, str(text), threads, threads=threads)
        out.append({"graph": name, "pattern": "text input loaded (parse + CSR)", "threads": threads,
                    "wall_s": res["seconds"], "peak_mb": res["peak_mb"], "MB_per_s": res["mb_per_s"]})
    for r in out:
        progress.print(f"  {name} {r['pattern']}: {r['wall_s']:.3g} s, peak {r['peak_mb']:.0f} MB", markup=False)
    return out


def _text_load_child(path: str, threads: int) -> dict:
    from recmine.g2miner.graph import load_graph

    t = time.perf_counter()
    g = load_graph(path, threads=threads, cache=False)
    sec = time.perf_counter() - t
    return {"seconds": sec, "edges": g.num_edges, "mb_per_s": Path(path).stat().st_size / 1e6 / sec,
            "peak_mb": peak_mb()}


def _print_scale(rows: list[dict], measured_gm: bool) -> None:
    table = []
    for r in rows:
        if "kernel_s" in r:
            ref = r.get("gm_kernel_s", ISSUE_GRAPHMINER.get(r["pattern"]) if r["graph"] == "10m" else None)
            gm_cell = (fmt_seconds(ref) + ("" if measured_gm else " (ref)")) if ref else ""
            if "gm_cut_off_s" in r:
                gm_cell = f">{r['gm_cut_off_s']:g} s"
            table.append({"graph": r["graph"], "run": r["pattern"], "ours": fmt_seconds(r["kernel_s"]),
                          "GraphMiner": gm_cell, "x": f"{r['x_kernel']:.2f}x" if r.get("x_kernel") else "",
                          "prep": fmt_seconds(r["preprocess_s"]),
                          "peak MB": f"{r['peak_mb_first']:.0f}/{r['peak_mb_cached']:.0f}"})
        else:
            table.append({"graph": r["graph"], "run": r["pattern"], "ours": fmt_seconds(r["wall_s"]),
                          "GraphMiner": "", "x": "", "prep": "", "peak MB": f"{r['peak_mb']:.0f}"})
    title = ("g2miner at scale, 2 threads, each run a fresh process\nkernel = count call (warm kernels), median of --pairs runs alternating "
             "with GraphMiner;\nx = median of GraphMiner/ours per pair; peak MB = first run / cached run" + ("" if measured_gm else "\n(ref) = issue 15's GraphMiner figure, not "
                                           "measured in this run"))
    console.print(rows_table(table, title=title))


def main(argv: list[str] | None = None) -> None:
    """Run every section and print one table per section (or JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", default="fb,oregon,powerlaw")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sections", default=",".join(t for t, _ in SECTIONS))
    ap.add_argument("--scale", action="store_true", help="run the scale section only (issue 15's graphs)")
    ap.add_argument("--scale-graphs", default="10m", help="10m and/or 100m (run 100m under the bigmem lock)")
    ap.add_argument("--graphminer", default=None, help="folder of GraphMiner binaries tc, clique, diamond, motif")
    ap.add_argument("--gm-timeout", type=float, default=300.0, help="seconds before a GraphMiner run is cut off")
    ap.add_argument("--pairs", type=int, default=3, help="alternating GraphMiner / ours kernel runs per pattern")
    args = ap.parse_args(argv)
    if args.scale:
        out = {"machine": f"{os.cpu_count()} vCPU", "date": time.strftime("%Y-%m-%d"), "scale": section_scale(args)}
        if args.json:
            print(json.dumps(out, default=str))
        return
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
