"""Fair comparison: every engine (faery at 1 and 2 threads, faiss at 1 and 2, numpy) runs alone in a process of its
own with the thread count it reports, every result is checked against the float64 oracle, both ratios are given,
and the removal comparison's searches agree with the oracle over the remaining rows. Also through
`recmine retrieve bench --json` and the demo's faery stage."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from recmine.faery.compare import compare, ratio_rows

faiss = pytest.importorskip("faiss")


def test_every_engine_runs_alone_in_its_own_process_and_is_checked() -> None:
    rng = np.random.default_rng(31)
    x = rng.standard_normal((12_000, 16)).astype(np.float32)
    q = rng.standard_normal((6, 16)).astype(np.float32)
    res = compare(x, q, [1, 10, 300], batch=rng.standard_normal((24, 16)).astype(np.float32), batch_k=20,
                  threads=(1, 2), removal=300, selectivities=(0.02, 0.5), filter_k=15, lifecycle=True)
    runs = res["runs"]
    assert [(r["engine"], r["threads_asked"]) for r in runs] == [
        ("faery", 1), ("faery", 2), ("faiss", 1), ("faiss", 2), ("numpy", 2)]
    pids = [r["pid"] for r in runs]
    assert len(set(pids)) == len(runs) and os.getpid() not in pids  # one fresh process per engine run
    assert all(r["threads"] == r["threads_asked"] for r in runs)  # numba / OpenMP / BLAS thread counts as asked
    assert res["all_exact"] and res["omp_wait_policy"] == "faery PASSIVE, faiss and numpy ACTIVE"
    for r in runs:
        for s in r["single"].values():
            assert s["recall"] >= 0.99 and s["p50_ms"] > 0 and s["p99_ms"] >= s["p50_ms"]
            assert s["exact"] or r["engine"] != "faery"
        assert r["batch_qps"] > 0 and r["batch_recall"] >= 0.99
    faiss_2t = next(r for r in runs if r["engine"] == "faiss" and r["threads"] == 2)
    assert {s["config"] for s in faiss_2t["single"].values()} <= {"IndexFlatIP", "IndexFlatIP, BLAS", "IndexShards x2"}
    for row in res["ratios"]:
        for key in ("x faiss 1t", "x faiss 2t", "x best/best", "x best peer"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["faiss best"].endswith(("1t", "2t")) and row["faery exact"] is True
    assert [r["K"] for r in res["latency"]] == [1, 10, 300]
    assert set(res["latency"][0]) == {"K", "faery 1t ms", "faery 2t ms", "faiss 1t ms", "faiss 2t ms", "numpy 2t ms"}
    hows = [(r["engine"], r["how"]) for r in res["removal_raw"]]
    assert hows == [("faery", "remove (tombstones)"), ("faery", "remove + compact()"),
                    ("faiss", "IDSelectorNot (tombstones)"), ("faiss", "remove_ids")]
    for r in res["removal_raw"]:
        assert r["recall"] >= 0.99 and r["op_ms"] >= 0 and (r["exact"] or r["engine"] == "faiss")
    # filtered search: faery's allow= bitmap, faiss's IDSelectorBitmap, a numpy mask, all checked per selectivity
    assert [row["allowed"] for row in res["filtered"]] == ["2%", "50%"]
    for row in res["filtered"]:
        assert row["faery exact"] is True and row["x faiss"] > 0 and row["numpy ms"] > 0
    for r in runs:
        assert set(r["filtered"]) == {0.02, 0.5} and all(f["recall"] >= 0.99 for f in r["filtered"].values())
        assert r["peak_rss_bytes"] > 0
    life = {row["engine"]: row for row in res["lifecycle"] if "load ms" in row}
    assert set(life) == {"faery int8 2t", "faiss 2t"}
    assert all(row["load ms"] >= 0 and 0 < row["1st search ms"] <= row["1st max ms"] and row["index GB"] > 0
               for row in life.values())


def test_the_best_against_best_ratio_is_taken_against_the_faster_peer() -> None:
    """numpy's matvec can beat faiss's flat index (it did at 1M and 10M x 128): the best-peer ratio then names numpy."""
    def run(engine: str, threads: int, ms: float, storage: str | None = None) -> dict:
        return {"engine": engine, "threads": threads, "threads_asked": threads, "storage": storage,
                "single": {10: {"p50_ms": ms, "config": "IndexFlatIP", "exact": True}}}

    res = {"ks": [10], "threads": [1, 2], "runs": [run("faery", 1, 16.0, "int8"), run("faery", 2, 8.0, "int8"),
                                                   run("faiss", 1, 40.0), run("faiss", 2, 48.0), run("numpy", 2, 28.0)]}
    (row,) = ratio_rows(res)
    assert row["x best/best"] == pytest.approx(40.0 / 8.0) and row["faiss best"] == "IndexFlatIP, 1t"
    assert row["x best peer"] == pytest.approx(28.0 / 8.0) and row["best peer"] == "numpy 2t"
    res["runs"][-1]["single"][10]["p50_ms"] = 50.0
    (row,) = ratio_rows(res)
    assert row["x best peer"] == pytest.approx(40.0 / 8.0) and row["best peer"] == "faiss 1t"


def test_retrieve_bench_reports_threads_and_both_ratios() -> None:
    from recmine.cli import app

    out = CliRunner().invoke(app, ["retrieve", "bench", "--n", "6000", "--dim", "8", "-k", "5,50", "--queries", "4",
                                   "--threads", "1,2", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["all_exact"] is True and "spawned process" in res["isolation"]
    assert {(e["engine"], e["threads"]) for e in res["engines"]} == {
        ("faery int8", 1), ("faery int8", 2), ("faiss", 1), ("faiss", 2), ("numpy", 2)}
    assert all(e["check"] == "exact" for e in res["engines"] if e["engine"].startswith("faery"))
    for row in res["ratios"]:
        assert row["x faiss 1t"] > 0 and row["x faiss 2t"] > 0 and row["x best/best"] > 0


def test_demo_faery_stage_times_engines_in_their_own_processes() -> None:
    from rich.console import Console

    from recmine.demo import UI, DemoConfig, run_demo

    cfg = DemoConfig(seed=0, quick=True, ekko_items=300, ekko_dim=8, catalogue_items=6000, catalogue_dim=16,
                     k_values=(1, 100), n_queries=5)
    res = run_demo(cfg, UI(Console(quiet=True)), None, sections=("faery",))["faery"]
    assert res["retrieval_exact"] is True and "spawned process" in res["isolation"]
    assert {(e["engine"], e["threads"]) for e in res["engines"]} >= {("faery int8", 1), ("faiss", 1)}
    for row in res["latency_vs_k"]:
        assert row["exact"] is True and row["ours_ms"] > 0 and row["numpy_ms"] > 0
        assert row["speedup_vs_faiss"] > 0 and row["x_faiss_equal_threads"] > 0 and row["faiss_best"]


def test_the_first_search_after_a_load_is_taken_over_fresh_loads(tmp_path) -> None:  # noqa: ANN001
    """The lifecycle row's first search is one sample per load, so it is measured over several fresh loads of the
    saved index (each index's own first search), reported as the median and the worst beside the warm median."""
    from recmine.faery import Index
    from recmine.faery.compare import first_after_load

    rng = np.random.default_rng(3)
    idx = Index(8)
    idx.add(rng.standard_normal((500, 8)).astype(np.float32))
    idx.save(tmp_path / "i")
    qs = rng.standard_normal((9, 8)).astype(np.float32)
    loaded, searched = [], []

    def load() -> Index:
        loaded.append(Index.load(tmp_path / "i"))
        return loaded[-1]

    def search(index: Index, q: np.ndarray) -> np.ndarray:
        searched.append((len(loaded), index is loaded[-1], q.tobytes()))
        return index.search(q, 5)[1]

    out = first_after_load(load, search, qs, loads=3, idle=0.0)
    assert out["loads"] == 3 and len({id(ix) for ix in loaded}) == 3
    # every load: its own index searched first with the first query, then with the next five
    assert searched == [(n, True, q.tobytes()) for n in (1, 2, 3) for q in qs[:6]]
    assert 0 < out["first_search_ms"] <= out["first_search_max_ms"]
    assert out["load_ms"] > 0 and out["warm_search_ms"] > 0 and out["first_over_warm"] > 0
