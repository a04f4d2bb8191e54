"""Update-latency benchmark: trainer Put -> visible at the last replica of the last DC, for ekko P2P, central push
and checkpoint, on the same processes, store and emulated WAN."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recmine.ekko.lab.cluster import LocalCluster
from recmine.ekko.ps.store import shard_of

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
    writes: str = "one"  # one: the trainer writes to DC 0's first server; sharded: each key to its shard's leader
    warmup_s: float = 0.5  # the stream runs this long before the measured part (the emulation's start-up transient)
    colocate: int = 1  # real cluster: servers of one DC per process (each its own gRPC endpoint)

    @property
    def warm_batches(self) -> int:
        """Batches of the stream written before the measured ones."""
        return int(round(self.warmup_s / self.batch_every_s))


def update_stream(spec: BenchSpec, duration_s: float | None = None) -> list[np.ndarray]:
    """The trainer's batches of keys (one every batch_every_s, Zipf over num_keys, duplicates collapsed): the same
    stream for the real cluster and the simulator. The first `spec.warm_batches` are the warm-up, the rest
    (`duration_s`, default spec.duration_s) are measured."""
    rng = np.random.default_rng(spec.seed)
    cdf = np.cumsum(np.arange(1, spec.num_keys + 1, dtype=np.float64) ** (-spec.zipf))
    cdf /= cdf[-1]
    per = max(1, int(round(spec.rate * spec.batch_every_s)))
    n = spec.warm_batches + max(1, int(round((duration_s or spec.duration_s) / spec.batch_every_s)))
    return [np.unique(np.minimum(np.searchsorted(cdf, rng.random(per)), spec.num_keys - 1)) for _ in range(n)]


def write_targets(spec: BenchSpec, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Where the trainer sends a batch: [(replica index in DC 0, keys)]. `writes="sharded"` sends each key to its
    shard's leader (replica shard mod replicas), as a sharded PS client does; "one" sends all to replica 0."""
    if spec.writes == "one":
        return [(0, keys)]
    if spec.writes != "sharded":
        raise ValueError(f"writes must be one or sharded, got {spec.writes!r}")
    rep = shard_of(keys, spec.shards) % spec.replicas
    return [(int(r), keys[rep == r]) for r in np.unique(rep).tolist()]


def _drive(c: LocalCluster, spec: BenchSpec, stop_after: float) -> tuple[list[tuple[np.ndarray, int]], int]:
    """Trainer: the update stream into DC 0 on schedule (it never sleeps when behind); returns [(keys, stamp)] and
    keys written, of the measured part (WAN byte counters restart when it begins)."""
    vals_rng = np.random.default_rng(spec.seed + 1)
    puts: list[tuple[np.ndarray, int]] = []
    written = 0
    clients = {r: c.client(c.node(0, r).node_id, timeout=10.0) for r in range(spec.replicas)}
    try:
        t_next = time.monotonic()
        for i, batch in enumerate(update_stream(spec, stop_after)):
            if i == spec.warm_batches:
                c.wan_bytes(reset=True)
            for r, keys in write_targets(spec, batch):
                vals = vals_rng.normal(size=(keys.size, spec.dim)).astype(np.float32)
                stamp = clients[r].put("emb", keys, vals)
                if i >= spec.warm_batches:
                    puts.append((keys, stamp))
                    written += keys.size
            t_next += spec.batch_every_s
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        for cl in clients.values():
            cl.close()
    return puts, written


def visibility(put_table: np.ndarray, put_keys: np.ndarray, put_ts: np.ndarray,
               log: dict[str, Any]) -> np.ndarray:
    """Per put row (table, key, version stamp): seconds until this server applied that version or a newer one of
    the same key (a newer version carries the put's change along), +inf if never.

    Parameters
    ----------
    put_table, put_keys, put_ts
        One entry per put row: table name, key, version stamp (ns, the trainer's wall clock).
    log
        The server's apply log as `PSClient.stats()` returns it (table, keys, ts, applied_ns per row).

    Returns
    -------
    float64 seconds per put row; +inf for a row never visible here.
    """
    vis = np.full(put_keys.size, np.inf)
    for table in np.unique(np.asarray(put_table, dtype=object)).tolist():
        sel = np.flatnonzero(put_table == table)
        rows = np.flatnonzero(log["table"] == table)
        if rows.size == 0:
            continue
        lk, lts, lat = log["keys"][rows], log["ts"][rows], log["applied_ns"][rows]
        order = np.lexsort((lts, lk))
        lk, lts, lat = lk[order], lts[order], lat[order]
        sufmin = lat.copy()  # earliest apply among this key's versions >= each one (versions sorted by ts)
        for i in range(sufmin.size - 2, -1, -1):
            if lk[i] == lk[i + 1] and sufmin[i + 1] < sufmin[i]:
                sufmin[i] = sufmin[i + 1]
        keys, stamps = put_keys[sel], put_ts[sel]
        starts = np.searchsorted(lk, keys, "left")
        ends = np.searchsorted(lk, keys, "right")
        for i in range(sel.size):
            lo, hi = starts[i], ends[i]
            if lo == hi:
                continue
            j = lo + np.searchsorted(lts[lo:hi], stamps[i], "left")
            if j < hi:
                vis[sel[i]] = (sufmin[j] - stamps[i]) / 1e9
    return vis


def _visibility(c: LocalCluster, puts: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Per put key: seconds until the newest-or-equal version was applied at the slowest PS (inf if never)."""
    keys = np.concatenate([k for k, _ in puts])
    stamps = np.concatenate([np.full(k.size, s, np.int64) for k, s in puts])
    tables = np.full(keys.size, "emb", dtype=object)
    worst = np.zeros(keys.size, np.float64)
    for n in c.nodes:
        with c.client(n.node_id, timeout=30.0) as cl:
            worst = np.maximum(worst, visibility(tables, keys, stamps, cl.stats()))
    return worst


def _warm_up(c: LocalCluster, spec: BenchSpec, timeout: float = 30.0) -> None:
    """Write one row outside the stream's keys at every writer and wait until every server holds it: connections
    and subscriptions are then open, so the measured stream sees the steady state, not the cluster's start."""
    key = np.array([spec.num_keys + 1], np.int64)
    stamps = {}
    for r in sorted({r for r, _ in write_targets(spec, np.arange(spec.num_keys))}):
        with c.client(c.node(0, r).node_id, timeout=10.0) as cl:
            stamps[r] = cl.put("emb", key + r, np.zeros((1, spec.dim), np.float32))
    deadline = time.monotonic() + timeout
    for n in c.nodes:
        with c.client(n.node_id, timeout=10.0) as cl:
            for r, stamp in stamps.items():
                while cl.get("emb", key + r)[2][0] < stamp:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"warm-up row never reached node {n.node_id}")
                    time.sleep(0.01)


def run_mode(spec: BenchSpec, mode: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one dissemination mode and measure update latency and WAN bytes."""
    topo = {"dcs": spec.dcs, "replicas": spec.replicas, "shards": spec.shards, "tables": {"emb": spec.dim},
            "rtt_ms": spec.rtt_ms, "nic_mbps": spec.nic_mbps, "mode": mode, "topology": spec.topology,
            "checkpoint_s": spec.checkpoint_s, "log_applies": True, "colocate": spec.colocate}
    with LocalCluster(topo) as c:
        if progress:
            progress(f"{mode}: cluster of {len(c.nodes)} PS up")
        if mode != "checkpoint":
            _warm_up(c, spec)
        c.wan_bytes(reset=True)
        duration = spec.duration_s if mode != "checkpoint" else max(spec.duration_s, spec.checkpoint_s * 1.2)
        box: dict[str, Any] = {}
        pids = sorted({n.proc.pid for n in c.nodes if n.proc} | ({c.wan_proc.pid} if c.wan_proc else set()))
        load = _CpuLoad(pids)
        t = threading.Thread(target=lambda: box.update(zip(("puts", "written"), _drive(c, spec, duration),
                                                            strict=True)))
        t.start()
        t.join()
        cores, other = load.done()
        settle = 2.0 + (spec.checkpoint_s * 1.5 if mode == "checkpoint" else 0.0)
        time.sleep(settle)
        lat = _visibility(c, box["puts"])
        wan = sum(c.wan_bytes().values())
    return {"mode": mode, "updates": int(lat.size), "visible": int(np.isfinite(lat).sum()),
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
            "wan_bytes": int(wan), "wan_bytes_per_update": wan / max(1, box["written"]),
            "cluster_cores": cores, "other_load_cores": other}


def proc_cpu(pid: int | str = "self") -> float:
    """CPU seconds a process's live threads have run, to the nanosecond (the scheduler's /proc/<pid>/task/*/schedstat;
    /proc/<pid>/stat counts in 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_cpu() -> float:
    """CPU seconds all processors have spent busy (not idle, not waiting for I/O) since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class _CpuLoad:
    """Cores the cluster (its processes and this one) used over a stretch of time, and cores everything else on
    the machine used meanwhile (other work competing with the emulation)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0, self.machine0 = time.monotonic(), machine_cpu()
        self.own0 = self._own()

    def _own(self) -> float:
        total = proc_cpu()
        for p in self.pids:
            with contextlib.suppress(OSError):
                total += proc_cpu(p)
        return total

    def done(self) -> tuple[float, float]:
        """(cores the cluster used, cores the rest of the machine used)."""
        dt = max(1e-9, time.monotonic() - self.t0)
        own = (self._own() - self.own0) / dt
        return own, max(0.0, (machine_cpu() - self.machine0) / dt - own)


def percentile(latencies: np.ndarray, q: float) -> float:
    """The q-th percentile (numpy's linear rule) of latencies in which an update never visible is +inf and counts:
    it is never left out, so a mode that loses updates cannot look faster for it. NaN for no updates."""
    x = np.sort(np.asarray(latencies, np.float64))
    if x.size == 0:
        return float("nan")
    if np.isnan(x).any():
        raise ValueError("latencies must not be NaN (an update never visible is +inf)")
    pos = q / 100.0 * (x.size - 1)
    lo = int(np.floor(pos))
    frac = pos - lo
    if frac == 0.0:
        return float(x[lo])
    if not np.isfinite(x[lo + 1]):
        return float("inf")
    return float(x[lo] + frac * (x[lo + 1] - x[lo]))


def physical_floor(spec: BenchSpec, rows_per_batch: float | None = None) -> float:
    """Floor of ekko's update latency: one-way delay x WAN hops + serialisation of one batch on the busiest NIC.

    Busiest NIC: in DC 0 the leader of each shard sends that shard's share of a batch once per WAN neighbour it
    feeds (every other DC in a mesh; its children, at most 2, in the binary tree); replica r leads the shards
    s with s mod replicas == r, so the busiest replica sends the largest share. Hops: 1 in a mesh, the depth of the
    last DC in the tree. A batch is `rows_per_batch` rows (default: the mean number of distinct keys per batch of
    the update stream). Processing time (encode, apply) is not in the floor."""
    one_way = spec.rtt_ms / 2000.0
    if spec.topology == "mesh":
        hops, fanout = 1, spec.dcs - 1
    else:
        hops = int(np.floor(np.log2(spec.dcs))) if spec.dcs > 1 else 0
        fanout = min(2, spec.dcs - 1)
    led = np.bincount(np.arange(spec.shards) % spec.replicas, minlength=spec.replicas)
    share = float(led.max()) / spec.shards
    if rows_per_batch is None:
        rows_per_batch = float(np.mean([b.size for b in update_stream(spec)]))
    batch_bytes = rows_per_batch * (spec.dim * 4 + ENTRY_OVERHEAD)
    return one_way * hops + batch_bytes * share * fanout * 8 / (spec.nic_mbps * 1e6)


def run_bench(spec: BenchSpec, modes: tuple[str, ...] = ("ekko", "push", "checkpoint"),
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All modes for one DC count; the keys `recmine ekko bench --json` prints."""
    res = {m: run_mode(spec, m, progress) for m in modes}
    entry = spec.dim * 4 + ENTRY_OVERHEAD
    links = spec.dcs - 1 if spec.topology == "mesh" else max(1, spec.dcs - 1)
    out: dict[str, Any] = {"dcs": spec.dcs, "floor_s": physical_floor(spec)}
    for m, r in res.items():  # updates visible at every PS by the end / updates written (the rest count as +inf)
        out[f"{m}_visible"], out[f"{m}_updates"] = r["visible"], r["updates"]
    for m, r in res.items():  # CPU the cluster used, and what other work on the machine took meanwhile
        out[f"{m}_cluster_cores"], out[f"{m}_other_load_cores"] = r["cluster_cores"], r["other_load_cores"]
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
