"""End-to-end ekko scenarios on real PS processes behind the WAN emulator, driven by the PyTorch recommender:

- `run_slo`: a link too slow for the full update stream. Serving quality (AUC of the far DCs' predictions on the
  replayed interactions, each scored before the trainer learns from it) and freshness of the most-requested items,
  for the SLO-aware updater vs FIFO vs an unthrottled link vs no updates between checkpoints.
- `run_rollback`: a clean stretch (false rollbacks counted), then a harmful update (its row changes x50); the model
  state manager compares the far DC's live rows with its delayed witness and rolls the damage back in every DC.

Every DC starts from the same checkpoint of a model warm-trained on the stream's first part (written as each PS's
snapshot before start), so only the live updates cross the WAN."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recmine.ekko.lab.cluster import LocalCluster
from recmine.ekko.lab.linksim import make_link
from recmine.ekko.ps.scheduler import ROW_OVERHEAD, Traffic
from recmine.ekko.ps.store import ParamStore, TableUpdate
from recmine.ekko.rec.data import Interactions, default_movielens_path, load_movielens, synthetic
from recmine.ekko.rec.guard import GuardConfig, ModelStateManager
from recmine.ekko.rec.model import OnlineTrainer, Update, score_rows, tables
from recmine.ekko.rec.serving import InferenceServer, QualityWindow, auc, logloss, ps_reader

Progress = Callable[[str], None]


@dataclass
class ScenarioSpec:
    """Workload and network of one scenario run."""

    data: str = "movielens"  # movielens | synthetic | a path to a MovieLens .inter file
    events: int | None = None  # use only the first N events (None: all)
    dcs: int = 4
    dim: int = 16
    batch: int = 250
    warm_fraction: float = 0.2
    replay_s: float = 20.0  # wall time the rest of the stream is replayed over
    link_fractions: tuple[float, ...] = (0.1, 0.25, 0.5)  # throttled links: shares of what the update stream needs
    rtt_ms: float = 50.0
    checkpoint_every: float = 0.25  # checkpoint baseline: a checkpoint per this share of the replay
    seed: int = 0
    traffic_half_life_s: float = 30.0  # the SLO-aware scheduler's memory of which keys inference reads
    codec: str = "int8"  # compressed variants: int8 or fp16 deltas ...
    significance: float = 0.05  # ... with changes below this share of a row's norm left in the residual

    def __post_init__(self) -> None:
        self.link_fractions = tuple(float(f) for f in self.link_fractions)
        if not self.link_fractions or not all(0 < f <= 1 for f in self.link_fractions):
            raise ValueError(f"link fractions must be in (0, 1], got {self.link_fractions}")
        if self.codec not in ("int8", "fp16"):
            raise ValueError(f"codec must be int8 or fp16, got {self.codec!r}")

    @property
    def compressed(self) -> str:
        """The codec part of a scheduler spec, e.g. '+int8@0.05'."""
        return f"+{self.codec}@{self.significance:g}"


def load_data(spec: ScenarioSpec) -> Interactions:
    """The scenario's interaction stream (MovieLens-100K from ../shared, the embedded stream, or a file)."""
    if spec.data == "synthetic":
        return synthetic(n_events=spec.events or 60_000, seed=spec.seed)
    path = default_movielens_path() if spec.data == "movielens" else Path(spec.data)
    d = load_movielens(path, limit=spec.events)
    return d


def _bootstrap(run_dir: Path, topo: dict[str, Any], state: Update) -> int:
    """Write the warm model as every PS's starting snapshot (origin: the trainer's PS, version vectors set, so
    nothing of it is re-sent); returns the checkpoint's stamp (ns)."""
    stamp = time.time_ns()
    n = topo["dcs"] * topo["replicas"]
    ups = [TableUpdate(t, k, v.astype(np.float32), np.full(k.shape[0], stamp, np.int64), np.zeros(k.shape[0], np.int32))
           for t, (k, v) in state.tables.items()]
    for node in range(n):
        store = ParamStore(topo["tables"], topo["shards"], node_id=node)
        store.apply(ups, {s: {0: stamp} for s in range(topo["shards"])}, source=0)
        store.save(run_dir / f"ps{node}.snap.npz")
    return stamp


def _warm(spec: ScenarioSpec, data: Interactions) -> tuple[OnlineTrainer, int]:
    trainer = OnlineTrainer(dim=spec.dim, seed=spec.seed)
    n_warm = int(len(data) * spec.warm_fraction)
    for lo in range(0, n_warm, spec.batch):
        b = data.slice(lo, min(lo + spec.batch, n_warm))
        trainer.step(b.user, b.item, b.label)
    return trainer, n_warm


class _DictReader:
    """In-process row reader over a checkpoint (the checkpoint baseline's serving copy)."""

    def __init__(self, state: Update, stamp_ns: int) -> None:
        self.rows = {t: dict(zip(k.tolist(), v, strict=True)) for t, (k, v) in state.tables.items()}
        self.dims = {t: v.shape[1] for t, (_, v) in state.tables.items()}
        self.stamp = stamp_ns

    def __call__(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = self.rows[table]
        out = np.zeros((keys.shape[0], self.dims[table]), np.float32)
        found = np.zeros(keys.shape[0], bool)
        for n, k in enumerate(keys.tolist()):
            v = src.get(k)
            if v is not None:
                out[n], found[n] = v, True
        return out, found, np.full(keys.shape[0], self.stamp, np.int64)


def _update_bytes(up: Update) -> int:
    return sum(k.shape[0] * (ROW_OVERHEAD + 4 * v.shape[1]) for k, v in up.tables.values())


def _replay(spec: ScenarioSpec, data: Interactions, variant: str, nic_mbps: float, progress: Progress | None,
            warm: tuple[OnlineTrainer, int] | None = None) -> dict[str, Any]:
    """One run: warm model checkpointed into every DC, then the rest of the stream replayed in real time.
    `variant`: unthrottled (send everything) or a scheduler spec (slo, fifo, slo+int8@0.05, ...)."""
    trainer, n_warm = copy.deepcopy(warm) if warm is not None else _warm(spec, data)
    topo = {"dcs": spec.dcs, "replicas": 1, "shards": 2, "tables": tables(spec.dim), "rtt_ms": spec.rtt_ms,
            "nic_mbps": nic_mbps, "scheduler": "all" if variant == "unthrottled" else variant,
            "traffic_half_life_s": spec.traffic_half_life_s}
    with tempfile.TemporaryDirectory(prefix="ekko-scenario-") as tmp:
        run_dir = Path(tmp)
        stamp = _bootstrap(run_dir, topo, trainer.full_state())
        with LocalCluster(topo, run_dir=run_dir) as c:
            clients = [c.client(c.node(d).node_id, timeout=30.0) for d in range(spec.dcs)]
            try:
                servers = [InferenceServer(ps_reader(cl), spec.dim, f"dc{d}", window=len(data))
                           for d, cl in enumerate(clients)]
                ckpt = InferenceServer(_DictReader(trainer.full_state(), stamp), spec.dim, "checkpoint",
                                       window=len(data))
                rest = data.slice(n_warm, len(data))
                n_batches = (len(rest) + spec.batch - 1) // spec.batch
                pace = spec.replay_s / n_batches
                ckpt_every = max(1, int(n_batches * spec.checkpoint_every))
                produced = rows = 0
                items_served: list[np.ndarray] = []
                ages: list[np.ndarray] = [[] for _ in range(spec.dcs)]  # type: ignore[misc]
                wan0 = sum(c.wan_bytes().values())
                t0 = time.monotonic()
                for b in range(n_batches):
                    ev = rest.slice(b * spec.batch, (b + 1) * spec.batch)
                    for d, srv in enumerate(servers):  # each DC serves the requests before the trainer learns
                        s = srv.serve(ev.user, ev.item, ev.label)
                        if d == 0:
                            at_origin = np.isfinite(s.age_s)  # rows the trainer's DC holds
                        # a row DC 0 holds but this DC lacks is an update not visible yet: age +inf, never left out
                        ages[d].append(np.where(np.isnan(s.age_s) & at_origin, np.inf, s.age_s))
                    ckpt.serve(ev.user, ev.item, ev.label)
                    items_served.append(ev.item)
                    up = trainer.step(ev.user, ev.item, ev.label)
                    for table, (k, v) in up.tables.items():
                        clients[0].put(table, k, v)
                    produced += _update_bytes(up)
                    rows += up.n_rows
                    if (b + 1) % ckpt_every == 0:
                        ckpt.read = _DictReader(trainer.full_state(), time.time_ns())
                    if progress and b % 40 == 0:
                        progress(f"{variant}: batch {b}/{n_batches}")
                    lag = t0 + (b + 1) * pace - time.monotonic()
                    if lag > 0:
                        time.sleep(lag)
                elapsed = time.monotonic() - t0
                wan = sum(c.wan_bytes().values()) - wan0
            finally:
                for cl in clients:
                    cl.close()
    items = np.concatenate(items_served)
    uniq, counts = np.unique(items, return_counts=True)
    hot = set(uniq[np.argsort(-counts)[: max(1, uniq.size // 10)]].tolist())
    hot_mask = np.array([i in hot for i in items.tolist()])
    far = []
    for d in range(1, spec.dcs):
        age = np.concatenate(ages[d])
        q = servers[d].quality.summary()
        far.append({"auc": q["auc"], "logloss": q["logloss"], "hot_age_p50_s": float(np.nanmedian(age[hot_mask]))})
    local = servers[0].quality.summary()
    cq = ckpt.quality.summary()
    return {"variant": variant, "nic_mbps": nic_mbps, "elapsed_s": elapsed, "batches": n_batches,
            "update_bytes_per_s": produced / elapsed, "rows": rows, "wan_bytes": int(wan),
            "wan_bytes_per_update": wan / max(1, rows * (spec.dcs - 1)),
            "far_auc": float(np.mean([f["auc"] for f in far])), "far_logloss": float(np.mean([f["logloss"] for f in far])),
            "far_hot_age_p50_s": float(np.median([f["hot_age_p50_s"] for f in far])), "local_auc": local["auc"],
            "checkpoint_auc": cq["auc"], "per_dc": far}


def _closed(quality: float, fifo: float, full: float) -> float:
    """Share of the FIFO-to-unthrottled quality gap a variant closes (NaN when FIFO has no gap)."""
    gap = full - fifo
    return (quality - fifo) / gap if gap > 0 else float("nan")


def run_slo(spec: ScenarioSpec, progress: Progress | None = None) -> dict[str, Any]:
    """SLO-aware vs FIFO vs unthrottled vs checkpoint-only, and SLO-aware with compressed deltas, at each of the
    spec's link fractions (shares of the bandwidth the update stream needs, measured on the unthrottled run).
    Returns the JSON the CLI prints."""
    data = load_data(spec)
    warm = _warm(spec, data)
    full = _replay(spec, data, "unthrottled", 1000.0, progress, warm)
    need_mbps = full["update_bytes_per_s"] * (spec.dcs - 1) * 8 / 1e6  # the trainer's PS feeds every other DC
    runs, rows = [full], []
    for f in spec.link_fractions:
        nic = max(0.05, need_mbps * f)
        slo, fifo, both = (_replay(spec, data, v, nic, progress, warm) for v in ("slo", "fifo", "slo" + spec.compressed))
        runs += [slo, fifo, both]
        rows.append({"link_fraction": f, "link_mbps": nic, "slo_aware_quality": slo["far_auc"],
                     "fifo_quality": fifo["far_auc"], "slo_compressed_quality": both["far_auc"],
                     "gap_closed": _closed(slo["far_auc"], fifo["far_auc"], full["far_auc"]),
                     "gap_closed_compressed": _closed(both["far_auc"], fifo["far_auc"], full["far_auc"]),
                     "hot_item_age_p50_s": {"slo": slo["far_hot_age_p50_s"], "fifo": fifo["far_hot_age_p50_s"],
                                            "slo_compressed": both["far_hot_age_p50_s"]},
                     "wan_mb": {"slo": slo["wan_bytes"] / 1e6, "fifo": fifo["wan_bytes"] / 1e6,
                                "slo_compressed": both["wan_bytes"] / 1e6}})
    return {"scenario": "slo", "metric": "AUC (far DCs, each event scored before training on it)",
            "unthrottled_quality": full["far_auc"], "checkpoint_quality": full["checkpoint_auc"],
            "fresh_minus_checkpoint": full["far_auc"] - full["checkpoint_auc"],
            "unthrottled_hot_item_age_p50_s": full["far_hot_age_p50_s"], "stream_needs_mbps": need_mbps,
            "compression": spec.compressed[1:], "fractions": rows, "runs": runs, "spec": asdict(spec),
            "data": data.source, "events": len(data)}


def run_compress(spec: ScenarioSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Compressed deltas apart from prioritisation: the same SLO-aware scheduler on a link wide enough for the
    whole stream, sending float32 rows vs int8 and fp16 deltas (WAN bytes per row update, far-DC AUC); then the
    short link (the spec's first link fraction): FIFO, FIFO compressed, SLO-aware compressed."""
    data = load_data(spec)
    warm = _warm(spec, data)
    full = _replay(spec, data, "unthrottled", 1000.0, progress, warm)
    need_mbps = full["update_bytes_per_s"] * (spec.dcs - 1) * 8 / 1e6
    sig = f"@{spec.significance:g}"
    wide = {name: _replay(spec, data, v, 1000.0, progress, warm)
            for name, v in (("fp32", "slo"), ("int8", "slo+int8" + sig), ("fp16", "slo+fp16" + sig))}
    nic = max(0.05, need_mbps * spec.link_fractions[0])
    short = {name: _replay(spec, data, v, nic, progress, warm)
             for name, v in (("fifo", "fifo"), ("fifo_compressed", "fifo" + spec.compressed),
                             ("slo_compressed", "slo" + spec.compressed))}
    base = wide["fp32"]
    return {"scenario": "compress", "metric": "WAN bytes per row update (all links) and far-DC AUC",
            "significance": spec.significance, "unthrottled_quality": full["far_auc"],
            "wide_link": {name: {"auc": r["far_auc"], "wan_bytes_per_update": r["wan_bytes_per_update"],
                                 "bytes_ratio": base["wan_bytes_per_update"] / max(r["wan_bytes_per_update"], 1e-9),
                                 "auc_delta": r["far_auc"] - base["far_auc"]} for name, r in wide.items()},
            "short_link": {"link_fraction": spec.link_fractions[0], "link_mbps": nic,
                           **{name: {"auc": r["far_auc"], "gap_closed": _closed(r["far_auc"], short["fifo"]["far_auc"],
                                                                                full["far_auc"])}
                              for name, r in short.items()}},
            "runs": [full, *wide.values(), *short.values()], "spec": asdict(spec), "data": data.source,
            "events": len(data)}


def run_rollback(spec: ScenarioSpec, window: int = 4, inject_window: int = 10, windows: int = 16,
                 guard: GuardConfig | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """A clean stretch of `inject_window` windows (false rollbacks counted), then a faulty trainer whose row changes
    are x50 until the guard rolls back; returns detection and rollback times (rollback: until every DC serves the
    restored rows). Each window is judged on the interactions served next, which no model has trained on."""
    guard_cfg = guard or GuardConfig(margin=0.05, patience=2, witness_delay=3 * window)
    data = load_data(spec)
    trainer, n_warm = _warm(spec, data)
    topo = {"dcs": spec.dcs, "replicas": 1, "shards": 2, "tables": tables(spec.dim), "rtt_ms": spec.rtt_ms,
            "nic_mbps": 100.0}
    state = trainer.full_state()
    mgr = ModelStateManager(state.tables, tables(spec.dim), guard_cfg)
    rest = data.slice(n_warm, len(data))
    out: dict[str, Any] = {"scenario": "rollback", "metric": "-logloss on the interactions served next",
                           "data": data.source, "dcs": spec.dcs, "guard": asdict(guard_cfg)}
    with tempfile.TemporaryDirectory(prefix="ekko-rollback-") as tmp:
        run_dir = Path(tmp)
        _bootstrap(run_dir, topo, state)
        with LocalCluster(topo, run_dir=run_dir) as c:
            clients = [c.client(c.node(d).node_id, timeout=30.0) for d in range(spec.dcs)]
            far = clients[-1]
            try:
                def quality_of(ev: Interactions) -> Callable[[Callable[[str, np.ndarray], np.ndarray]], float]:
                    def evaluate(get: Callable[[str, np.ndarray], np.ndarray]) -> float:
                        head = get("dense", np.array([0]))[0].reshape(spec.dim, spec.dim)
                        z = score_rows(get("user", ev.user), get("item", ev.item), head)
                        return -logloss(z, ev.label)
                    return evaluate

                live = lambda t, k: far.get(t, k)[0]  # noqa: E731 - the far DC's served rows
                t_inject = rb = None
                verdicts = []
                false_rollbacks = 0
                total = windows * window
                for b in range(total):
                    lo = (b * spec.batch) % max(1, len(rest) - spec.batch)
                    ev = rest.slice(lo, lo + spec.batch)
                    harmful = b >= inject_window * window and rb is None  # a faulty trainer until rolled back
                    up = trainer.step(ev.user, ev.item, ev.label, scale=50.0 if harmful else 1.0)
                    if harmful and t_inject is None:
                        t_inject = time.monotonic()
                    for table, (k, v) in up.tables.items():
                        clients[0].put(table, k, v)
                    mgr.record_batch([(t, k, v) for t, (k, v) in up.tables.items()])
                    if b % window == window - 1:
                        _wait_rows([far], up.tables)  # serving reads what was written (one WAN delay later)
                        nxt = rest.slice(lo + spec.batch, lo + 2 * spec.batch)  # the interactions served next
                        v = mgr.check(quality_of(nxt if len(nxt) else ev), live)
                        verdicts.append({"window": v.window, "live": v.live, "witness": v.witness, "bad": v.bad})
                        if v.rollback_due:
                            t_detect = time.monotonic()
                            rep = mgr.rollback(lambda t, k, vals: clients[0].put(t, k, vals))
                            trainer.load_rows(rep.restored)
                            _wait_rows(clients, rep.restored)
                            t_done = time.monotonic()
                            if t_inject is None:
                                false_rollbacks += 1
                            elif rb is None:
                                rb = {"detect_s": t_detect - t_inject, "rollback_s": t_done - t_detect,
                                      "keys": rep.total_keys, "windows_to_detect": v.window - rep.detect_window + 1,
                                      "model_rows": len(trainer.users) + len(trainer.items) + 1}
                    if progress and b % window == 0:
                        progress(f"rollback: batch {b}/{total}")
                after = verdicts[-1] if verdicts else None
            finally:
                for cl in clients:
                    cl.close()
    out.update({"detected": rb is not None, "detect_s": rb["detect_s"] if rb else None,
                "rollback_s": rb["rollback_s"] if rb else None, "false_rollbacks": false_rollbacks,
                "rollback": rb, "windows": verdicts,
                "recovered": bool(after and after["live"] >= after["witness"] - guard_cfg.margin)})
    return out


def _wait_rows(clients: list, restored: dict[str, tuple[np.ndarray, np.ndarray]], timeout: float = 30.0) -> None:
    """Until every DC serves exactly the restored rows."""
    deadline = time.monotonic() + timeout
    for cl in clients:
        for table, (keys, vals) in restored.items():
            if keys.size == 0:
                continue
            while not np.array_equal(cl.get(table, keys)[0], vals):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollback not visible at {cl.address} after {timeout} s")
                time.sleep(0.005)


__all__ = ["ScenarioSpec", "run_compress", "run_rollback", "run_slo", "simulate", "auc", "QualityWindow"]


def run_live(spec: ScenarioSpec, topology: dict[str, Any] | None = None, inject_at: int | None = None,
             window: int = 4, on_tick: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trainer + cluster + serving together: replay the stream's rest over `spec.replay_s`, every DC serving each
    batch from its own PS before the trainer learns it; the guard watches the farthest DC. `inject_at` (a batch
    number) starts a faulty trainer (row changes x50) that runs until the guard rolls it back. `on_tick` gets a
    snapshot after every window: per-DC quality and parameter age, and the guard's state."""
    data = load_data(spec)
    trainer, n_warm = _warm(spec, data)
    topo = dict(topology or {"dcs": spec.dcs, "replicas": 1, "shards": 2, "rtt_ms": spec.rtt_ms, "nic_mbps": 100.0})
    topo["tables"] = tables(spec.dim)
    from recmine.ekko.lab.cluster import load_topology

    topo = load_topology(topo)
    state = trainer.full_state()
    mgr = ModelStateManager(state.tables, tables(spec.dim), GuardConfig(margin=0.05, patience=2,
                                                                        witness_delay=3 * window))
    rest = data.slice(n_warm, len(data))
    n_batches = (len(rest) + spec.batch - 1) // spec.batch
    pace = spec.replay_s / n_batches
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ekko-run-") as tmp:
        run_dir = Path(tmp)
        _bootstrap(run_dir, topo, state)
        with LocalCluster(topo, run_dir=run_dir) as c:
            clients = [c.client(c.node(d).node_id, timeout=30.0) for d in range(topo["dcs"])]
            servers = [InferenceServer(ps_reader(cl), spec.dim, f"dc{d}", window=20 * spec.batch)
                       for d, cl in enumerate(clients)]
            far = clients[-1]
            faulty = False
            t0 = time.monotonic()
            try:
                for b in range(n_batches):
                    ev = rest.slice(b * spec.batch, (b + 1) * spec.batch)
                    ages = [srv.serve(ev.user, ev.item, ev.label).age_s for srv in servers]
                    # a row the trainer's DC holds but a DC lacks is an update not visible there yet: +inf, kept
                    ages = [np.where(np.isnan(a) & np.isfinite(ages[0]), np.inf, a) for a in ages]
                    if inject_at is not None and b == inject_at:
                        faulty = True
                        events.append({"t_s": time.monotonic() - t0, "batch": b, "event": "harmful update injected"})
                    up = trainer.step(ev.user, ev.item, ev.label, scale=50.0 if faulty else 1.0)
                    for table, (k, v) in up.tables.items():
                        clients[0].put(table, k, v)
                    mgr.record_batch([(t, k, v) for t, (k, v) in up.tables.items()])
                    if b % window == window - 1:
                        nxt = rest.slice((b + 1) * spec.batch, (b + 2) * spec.batch)
                        if len(nxt):
                            def evaluate(get: Callable[[str, np.ndarray], np.ndarray], ev: Interactions = nxt
                                         ) -> float:
                                head = get("dense", np.array([0]))[0].reshape(spec.dim, spec.dim)
                                return -logloss(score_rows(get("user", ev.user), get("item", ev.item), head), ev.label)

                            v = mgr.check(evaluate, lambda t, k: far.get(t, k)[0])
                            if v.rollback_due:
                                t_d = time.monotonic()
                                rep = mgr.rollback(lambda t, k, vals: clients[0].put(t, k, vals))
                                trainer.load_rows(rep.restored)
                                faulty = False
                                _wait_rows(clients, rep.restored)
                                events.append({"t_s": t_d - t0, "batch": b, "event":
                                               f"rolled back {rep.total_keys} keys; visible in every DC "
                                               f"{(time.monotonic() - t_d) * 1e3:.0f} ms later"})
                        if on_tick is not None:
                            on_tick({"batch": b + 1, "batches": n_batches, "t_s": time.monotonic() - t0,
                                     "dcs": [{"dc": s.name, **s.quality.summary(),
                                              "age_p50_ms": float(np.nanmedian(a) * 1e3) if (~np.isnan(a)).any()
                                              else float("nan")} for s, a in zip(servers, ages, strict=True)],
                                     "guard": mgr.history[-1].__dict__ if mgr.history else None,
                                     "faulty": faulty, "events": list(events)})
                    lag = t0 + (b + 1) * pace - time.monotonic()
                    if lag > 0:
                        time.sleep(lag)
            finally:
                for cl in clients:
                    cl.close()
    return {"data": data.source, "events": len(data), "batches": n_batches,
            "dcs": [{"dc": s.name, **s.quality.summary()} for s in servers], "guard_events": events,
            "rollbacks": len(mgr.rollbacks)}


def _store_reader(store: ParamStore, traffic: Traffic | None = None) -> Callable:
    """A RowReader over an in-process store; reads are counted as inference traffic when `traffic` is given."""
    def read(table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if traffic is not None:
            traffic.observe(table, keys)
        return store.get(table, keys)
    return read


def simulate(spec: ScenarioSpec, data: Interactions, scheduler: str, link_bytes_per_s: float = 1e12,
             warm: tuple[OnlineTrainer, int] | None = None) -> dict[str, Any]:
    """The slo scenario's replay over one simulated link (lab/linksim.py: real stores, scheduler, protocol core
    and wire encoding; modelled network; simulated time): the far DC scores every batch before the trainer learns
    from it. `scheduler`: all (unthrottled), checkpoint, or a scheduler spec (slo, fifo, slo+int8, ...). Returns
    far-DC AUC / logloss, wire bytes and rows produced."""
    trainer, n_warm = copy.deepcopy(warm) if warm is not None else _warm(spec, data)
    link = make_link(tables(spec.dim), "all" if scheduler in ("all", "checkpoint") else scheduler, link_bytes_per_s,
                     delay_s=spec.rtt_ms / 2000.0, traffic_half_life_s=spec.traffic_half_life_s)
    state = trainer.full_state()
    stamp = 1
    for store in (link.src, link.dst):
        store.apply([TableUpdate(t, k, v.astype(np.float32), np.full(k.shape[0], stamp, np.int64),
                                 np.zeros(k.shape[0], np.int32)) for t, (k, v) in state.tables.items()],
                    {s: {0: stamp} for s in range(link.src.num_shards)})
    traffic = getattr(link.sender, "traffic", None)
    local = InferenceServer(_store_reader(link.src, traffic), spec.dim, "dc0", window=len(data))
    far_read: Callable = _store_reader(link.dst)
    if scheduler == "checkpoint":
        far_read = _DictReader(state, stamp)
    far = InferenceServer(far_read, spec.dim, "far", window=len(data))
    rest = data.slice(n_warm, len(data))
    n_batches = (len(rest) + spec.batch - 1) // spec.batch
    pace = spec.replay_s / n_batches
    ckpt_every = max(1, int(n_batches * spec.checkpoint_every))
    rows = 0
    for b in range(n_batches):
        ev = rest.slice(b * spec.batch, (b + 1) * spec.batch)
        local.dense_refresh_s = far.dense_refresh_s = 0.0  # simulated time: read the head every batch
        far.serve(ev.user, ev.item, ev.label)
        local.serve(ev.user, ev.item, ev.label)
        up = trainer.step(ev.user, ev.item, ev.label)
        for table, (k, v) in up.tables.items():
            link.src.put(table, k, v)
        rows += up.n_rows
        if scheduler == "checkpoint" and (b + 1) % ckpt_every == 0:
            far.read = _DictReader(trainer.full_state(), stamp)
        link.advance(pace)
    q = far.quality.summary()
    return {"variant": scheduler, "far_auc": q["auc"], "far_logloss": q["logloss"], "wire_bytes": link.wire_bytes,
            "bytes_per_s": link.wire_bytes / spec.replay_s, "rows": rows, "batches": n_batches,
            "local_auc": local.quality.summary()["auc"]}
