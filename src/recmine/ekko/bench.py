"""Update-latency benchmark: trainer Put -> visible at the last replica of the last DC, for ekko P2P, central push
and checkpoint, on the same processes, store and emulated WAN."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from recmine.ekko.cluster import LocalCluster

ENTRY_OVERHEAD = 8 + 8 + 4  # key, ts, origin beside the float32 vector


@dataclass
class BenchSpec:
    """One benchmark run's workload and network."""

    dcs: int = 4
    replicas: int = 2
    shards: int = 2
    dim: int = 64
    rate: float = 2000.0  # key updates per second
    batch_every_s: float = 0.02
    zipf: float = 1.1
    num_keys: int = 100_000
    rtt_ms: float = 50.0
    nic_mbps: float = 100.0
    duration_s: float = 8.0
    checkpoint_s: float = 10.0
    topology: str = "mesh"
    seed: int = 0


def _zipf_keys(rng: np.random.Generator, n: int, a: float, num_keys: int) -> np.ndarray:
    ranks = np.arange(1, num_keys + 1, dtype=np.float64)
    p = ranks ** (-a)
    p /= p.sum()
    return rng.choice(num_keys, size=n, p=p)


def _drive(c: LocalCluster, spec: BenchSpec, stop_after: float) -> tuple[list[tuple[np.ndarray, int]], int]:
    """Trainer: Zipf batches at `rate` keys/s into DC 0 replica 0; returns [(keys, stamp)] and keys written."""
    rng = np.random.default_rng(spec.seed)
    per_batch = max(1, int(round(spec.rate * spec.batch_every_s)))
    puts: list[tuple[np.ndarray, int]] = []
    written = 0
    with c.client(c.node(0, 0).node_id, timeout=10.0) as cl:
        t_next = time.monotonic()
        end = t_next + stop_after
        while time.monotonic() < end:
            keys = np.unique(_zipf_keys(rng, per_batch, spec.zipf, spec.num_keys))
            vals = rng.normal(size=(keys.size, spec.dim)).astype(np.float32)
            stamp = cl.put("emb", keys, vals)
            puts.append((keys, stamp))
            written += keys.size
            t_next += spec.batch_every_s
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return puts, written


def _visibility(c: LocalCluster, puts: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Per put key: seconds until the newest-or-equal version was applied at the slowest PS (inf if never)."""
    keys = np.concatenate([k for k, _ in puts])
    stamps = np.concatenate([np.full(k.size, s, np.int64) for k, s in puts])
    worst = np.zeros(keys.size, np.float64)
    for n in c.nodes:
        with c.client(n.node_id, timeout=30.0) as cl:
            st = cl.stats()
        lk, lts, lat = st["keys"], st["ts"], st["applied_ns"]
        order = np.lexsort((lts, lk))
        lk, lts, lat = lk[order], lts[order], lat[order]
        # suffix minimum of apply time within each key's run (versions sorted by ts)
        sufmin = lat.copy()
        for i in range(sufmin.size - 2, -1, -1):
            if lk[i] == lk[i + 1] and sufmin[i + 1] < sufmin[i]:
                sufmin[i] = sufmin[i + 1]
        combo = lk.astype(np.float64) * 1e19 + lts  # not used for exactness; search per key below
        del combo
        starts = np.searchsorted(lk, keys, "left")
        ends = np.searchsorted(lk, keys, "right")
        vis = np.full(keys.size, np.inf)
        for i in range(keys.size):
            lo, hi = starts[i], ends[i]
            if lo == hi:
                continue
            j = lo + np.searchsorted(lts[lo:hi], stamps[i], "left")
            if j < hi:
                vis[i] = (sufmin[j] - stamps[i]) / 1e9
        worst = np.maximum(worst, vis)
    return worst


def run_mode(spec: BenchSpec, mode: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one dissemination mode and measure update latency and WAN bytes."""
    topo = {"dcs": spec.dcs, "replicas": spec.replicas, "shards": spec.shards, "tables": {"emb": spec.dim},
            "rtt_ms": spec.rtt_ms, "nic_mbps": spec.nic_mbps, "mode": mode, "topology": spec.topology,
            "checkpoint_s": spec.checkpoint_s, "log_applies": True}
    with LocalCluster(topo) as c:
        if progress:
            progress(f"{mode}: cluster of {len(c.nodes)} PS up")
        c.wan_bytes(reset=True)
        duration = spec.duration_s if mode != "checkpoint" else max(spec.duration_s, spec.checkpoint_s * 1.2)
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.update(zip(("puts", "written"), _drive(c, spec, duration),
                                                            strict=True)))
        t.start()
        t.join()
        settle = 2.0 + (spec.checkpoint_s * 1.5 if mode == "checkpoint" else 0.0)
        time.sleep(settle)
        lat = _visibility(c, box["puts"])
        wan = sum(c.wan_bytes().values())
    finite = lat[np.isfinite(lat)]
    return {"mode": mode, "updates": int(box["written"]), "visible": int(finite.size),
            "p50_s": float(np.percentile(finite, 50)) if finite.size else float("inf"),
            "p99_s": float(np.percentile(finite, 99)) if finite.size else float("inf"),
            "wan_bytes": int(wan), "wan_bytes_per_update": wan / max(1, box["written"])}


def physical_floor(spec: BenchSpec) -> float:
    """One-way delay x WAN hops + bytes one batch puts on the busiest NIC / its bandwidth (P2P mesh or tree)."""
    one_way = spec.rtt_ms / 2000.0
    if spec.topology == "mesh":
        hops, fanout = 1, spec.dcs - 1
    else:
        hops = int(np.floor(np.log2(max(1, spec.dcs)))) if spec.dcs > 1 else 0
        fanout = 3
    batch_bytes = spec.rate * spec.batch_every_s * (spec.dim * 4 + ENTRY_OVERHEAD)
    return one_way * hops + batch_bytes * fanout * 8 / (spec.nic_mbps * 1e6)


def run_bench(spec: BenchSpec, modes: tuple[str, ...] = ("ekko", "push", "checkpoint"),
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All modes for one DC count; the keys `recmine ekko bench --json` prints."""
    res = {m: run_mode(spec, m, progress) for m in modes}
    entry = spec.dim * 4 + ENTRY_OVERHEAD
    links = spec.dcs - 1 if spec.topology == "mesh" else max(1, spec.dcs - 1)
    out: dict[str, Any] = {"dcs": spec.dcs, "floor_s": physical_floor(spec)}
    if "ekko" in res:
        out.update(ekko_p50_s=res["ekko"]["p50_s"], ekko_p99_s=res["ekko"]["p99_s"],
                   wan_bytes_per_update=res["ekko"]["wan_bytes_per_update"],
                   wan_bytes_ideal_per_update=entry * links)
    if "push" in res:
        out.update(push_p50_s=res["push"]["p50_s"], push_p99_s=res["push"]["p99_s"])
    if "checkpoint" in res:
        out.update(checkpoint_p50_s=res["checkpoint"]["p50_s"])
    out["runs"] = list(res.values())
    return out
