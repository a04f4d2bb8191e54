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
from recmine.ekko.rec.guard import GuardConfig, ModelStateManager, Quarantine
from recmine.ekko.rec.model import DENSE_KEYS, OnlineTrainer, Update, heads, score_context, tables
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


def warm_start(spec: ScenarioSpec, data: Interactions) -> tuple[OnlineTrainer, int]:
    """The model trained on the stream's first `warm_fraction` (every DC starts from it), and its event count."""
    trainer = OnlineTrainer(dim=spec.dim, seed=spec.seed)
    n_warm = int(len(data) * spec.warm_fraction)
    for lo in range(0, n_warm, spec.batch):
        b = data.slice(lo, min(lo + spec.batch, n_warm))
        trainer.step(b.user, b.item, b.label)
    return trainer, n_warm


def _server(read: Callable, spec: ScenarioSpec, name: str, trainer: OnlineTrainer, seen: Interactions,
            **kw: Any) -> InferenceServer:
    """An inference server for the trainer's model whose request context already holds the events `seen` (the
    stream before serving began: the serving side saw it too)."""
    srv = InferenceServer(read, spec.dim, name, context=trainer.context.size, **kw)
    srv.observe(seen.user, seen.item)
    return srv


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
    trainer, n_warm = copy.deepcopy(warm) if warm is not None else warm_start(spec, data)
    topo = {"dcs": spec.dcs, "replicas": 1, "shards": 2, "tables": tables(spec.dim), "rtt_ms": spec.rtt_ms,
            "nic_mbps": nic_mbps, "scheduler": "all" if variant == "unthrottled" else variant,
            "traffic_half_life_s": spec.traffic_half_life_s}
    with tempfile.TemporaryDirectory(prefix="ekko-scenario-") as tmp:
        run_dir = Path(tmp)
        stamp = _bootstrap(run_dir, topo, trainer.full_state())
        with LocalCluster(topo, run_dir=run_dir) as c:
            clients = [c.client(c.node(d).node_id, timeout=30.0) for d in range(spec.dcs)]
            try:
                seen = data.slice(0, n_warm)
                servers = [_server(ps_reader(cl), spec, f"dc{d}", trainer, seen, window=len(data))
                           for d, cl in enumerate(clients)]
                ckpt = _server(_DictReader(trainer.full_state(), stamp), spec, "checkpoint", trainer, seen,
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
    warm = warm_start(spec, data)
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
                                "slo_compressed": both["wan_bytes"] / 1e6},
                     "elapsed_s": {"slo": slo["elapsed_s"], "fifo": fifo["elapsed_s"],
                                   "slo_compressed": both["elapsed_s"]}})
    return {"scenario": "slo", "metric": "AUC (far DCs, each event scored before training on it)",
            "unthrottled_quality": full["far_auc"], "checkpoint_quality": full["checkpoint_auc"],
            "fresh_minus_checkpoint": full["far_auc"] - full["checkpoint_auc"],
            "unthrottled_hot_item_age_p50_s": full["far_hot_age_p50_s"], "stream_needs_mbps": need_mbps,
            "unthrottled_elapsed_s": full["elapsed_s"],
            "compression": spec.compressed[1:], "fractions": rows, "runs": runs, "spec": asdict(spec),
            "data": data.source, "events": len(data)}


def run_compress(spec: ScenarioSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Compressed deltas apart from prioritisation: the same SLO-aware scheduler on a link wide enough for the
    whole stream, sending float32 rows vs int8 and fp16 deltas (WAN bytes per row update, far-DC AUC). Both
    together under the short links: `run_slo`'s compressed column."""
    data = load_data(spec)
    warm = warm_start(spec, data)
    sig = f"@{spec.significance:g}"
    wide = {name: _replay(spec, data, v, 1000.0, progress, warm)
            for name, v in (("fp32", "slo"), ("int8", "slo+int8" + sig), ("fp16", "slo+fp16" + sig))}
    base = wide["fp32"]
    return {"scenario": "compress", "metric": "WAN bytes per row update (all links) and far-DC AUC",
            "significance": spec.significance,
            "wide_link": {name: {"auc": r["far_auc"], "wan_bytes_per_update": r["wan_bytes_per_update"],
                                 "bytes_ratio": base["wan_bytes_per_update"] / max(r["wan_bytes_per_update"], 1e-9),
                                 "auc_delta": r["far_auc"] - base["far_auc"]} for name, r in wide.items()},
            "runs": list(wide.values()), "spec": asdict(spec), "data": data.source, "events": len(data)}


HARMS = ("scale50", "label_flip", "label_flip_unsliced", "label_flip_all", "nan_rows", "exploding_head",
         "stale_replay", "stale_replay_unmarked")
SLICES = 8  # the guard watches -logloss per user cohort (user id mod 8) besides the whole window
COHORT = 5  # the cohort whose labels the label-flip harm inverts


class HarmedRows(set):
    """Ground truth for a rollback study: the (table, key) rows whose value at the PS is harmful right now."""

    def written(self, updates: list[tuple[str, np.ndarray, np.ndarray]], harmful: bool) -> None:
        """Rows were written: harmful ones join the set, the others (a clean value over them) leave it."""
        for t, k, _ in updates:
            keys = {(t, int(x)) for x in k.tolist()}
            if harmful:
                self.update(keys)
            else:
                self.difference_update(keys)


def run_rollback(spec: ScenarioSpec, harms: tuple[str, ...] = HARMS, window: int = 4, inject_window: int = 8,
                 fix_window: int = 14, windows: int = 20, guard: GuardConfig | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Every kind of harm, each in its own run on a fresh cluster: a clean stretch, then from window
    `inject_window` a faulty trainer that keeps sending until the operator fixes it at `fix_window`; the guard
    screens every batch, compares the far DC's live rows with its witness per window (per user cohort too), rolls
    back in every DC and quarantines the trainer (held updates judged in shadow, released after healthy windows).
    Plus a clean run of the same length (false rollbacks). Harms: scale50 (row changes x50), label_flip (one
    cohort's labels inverted; _unsliced: the guard without cohort slices; _all: every user's labels inverted), nan_rows (NaN/Inf rows), exploding_head
    (dense heads x1000), stale_replay (the trainer restarts from the warm checkpoint and pushes it; _unmarked: no
    model step sent along: its rows go back in content). Every batch is screened with the labels the trainer learned
    from beside the feedback serving logged for the same events."""
    unknown = set(harms) - set(HARMS)
    if unknown:
        raise ValueError(f"unknown harm(s) {sorted(unknown)}; choose from {list(HARMS)}")
    cfg = guard or GuardConfig(margin=0.05, patience=2, witness_delay=6 * window, slice_margin=0.03, slice_z=3.0,
                               to_witness=True)
    data = load_data(spec)
    warm = warm_start(spec, data)
    clean = _guard_run(spec, data, warm, None, window, inject_window, fix_window, windows, cfg, progress)
    out: dict[str, Any] = {"scenario": "rollback", "data": data.source, "dcs": spec.dcs, "guard": asdict(cfg),
                           "metric": "-logloss of the interactions served next (whole window and per user cohort)",
                           "window_batches": window, "inject_window": inject_window, "fix_window": fix_window,
                           "windows": windows, "clean": clean, "harms": {}}
    for harm in harms:
        r = _guard_run(spec, data, warm, harm, window, inject_window, fix_window, windows, cfg, progress)
        same = clean["auc_by_window"][r["detect_window"] + 1:] if r["detected"] else []
        r["clean_quality_same_windows"] = float(np.mean(same)) if same else None
        same = clean["auc_by_window"][r["released_window"] + 1:] if r["released_window"] is not None else []
        r["clean_quality_after_release"] = float(np.mean(same)) if same else None
        out["harms"][harm] = r
    first = out["harms"].get("scale50") or next(iter(out["harms"].values()), None)
    out.update({"detected": bool(first and first["detected"]), "detect_s": first and first["detect_s"],
                "rollback_s": first and first["rollback_s"], "false_rollbacks": clean["false_rollbacks"],
                "recovered": bool(first and first["recovered"])})
    return out


def _harmful_step(harm: str, trainer: OnlineTrainer, ev: Interactions, stale: OnlineTrainer | None
                  ) -> tuple[Update, OnlineTrainer, np.ndarray]:
    """One step of a faulty trainer (returns its update, the trainer that goes on and the labels it learned from)."""
    if harm == "scale50":
        return trainer.step(ev.user, ev.item, ev.label, scale=50.0), trainer, ev.label
    if harm.startswith("label_flip"):
        flip = np.full(len(ev), True) if harm == "label_flip_all" else ev.user % SLICES == COHORT
        y = np.where(flip, 1.0 - ev.label, ev.label)
        return trainer.step(ev.user, ev.item, y), trainer, y
    if harm.startswith("stale_replay"):
        if stale is not None:  # restarted from the warm checkpoint: pushes all of it, then trains on from there
            stale.step(ev.user, ev.item, ev.label)
            return stale.full_state(), stale, ev.label
        return trainer.step(ev.user, ev.item, ev.label), trainer, ev.label
    up = trainer.step(ev.user, ev.item, ev.label)
    if harm == "nan_rows":
        k, v = up.tables["item"]
        v = v.copy()
        v[: max(1, len(v) // 20)] = np.nan
        v[-1, 0] = np.inf
        up.tables["item"] = (k, v)
    elif harm == "exploding_head":
        up.tables["dense"] = (trainer.dense_rows()[0], trainer.dense_rows()[1] * 1000.0)
    else:
        raise ValueError(f"unknown harm {harm!r}")
    return up, trainer, ev.label


def _guard_run(spec: ScenarioSpec, data: Interactions, warm: tuple[OnlineTrainer, int], harm: str | None,
               window: int, inject_window: int, fix_window: int, windows: int, cfg: GuardConfig,
               progress: Progress | None) -> dict[str, Any]:
    """One guarded run on a fresh cluster (see run_rollback); harm None: the clean run."""
    trainer, n_warm = copy.deepcopy(warm)
    checkpoint = copy.deepcopy(warm[0])  # what a stale replay restarts from
    sliced = harm != "label_flip_unsliced"
    marked = harm != "stale_replay_unmarked"
    topo = {"dcs": spec.dcs, "replicas": 1, "shards": 2, "tables": tables(spec.dim), "rtt_ms": spec.rtt_ms,
            "nic_mbps": 100.0}
    mgr = ModelStateManager(trainer.full_state().tables, tables(spec.dim), cfg)
    gate = Quarantine(margin=cfg.margin, release_after=2, slice_margin=cfg.slice_margin)
    src = "trainer"
    rest = data.slice(n_warm, len(data))
    total = windows * window
    inject, fix = inject_window * window, fix_window * window
    res: dict[str, Any] = {"harm": harm or "none", "detected": False, "detected_by": None, "detect_s": None,
                           "windows_to_detect": None, "detect_window": None, "rollback_s": None, "keys": 0,
                           "refused": [], "false_rollbacks": 0, "rollbacks": 0, "held_batches": 0,
                           "discarded_rows": 0, "released_window": None, "harm_served_windows": 0,
                           "rollback_held": None, "verdicts": []}
    harm_keys = HarmedRows()  # rows holding a harmful value at the PS now (ground truth)
    restored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    held_checks: list[bool] = []
    auc_by_window: list[float] = []
    t_inject = 0.0
    last_step = trainer.steps
    pre_fault = trainer
    with tempfile.TemporaryDirectory(prefix="ekko-guard-") as tmp:
        run_dir = Path(tmp)
        _bootstrap(run_dir, topo, trainer.full_state())
        with LocalCluster(topo, run_dir=run_dir) as c:
            clients = [c.client(c.node(d).node_id, timeout=30.0) for d in range(spec.dcs)]
            far = clients[-1]
            far_srv = _server(ps_reader(far), spec, "far", trainer, data.slice(0, n_warm), dense_refresh_s=0.0,
                              window=window * spec.batch)
            written = harm_keys.written

            def evaluate_on(ev: Interactions) -> Callable[[Callable[[str, np.ndarray], np.ndarray]], Any]:
                ctx = far_srv.context.batch(ev.user, ev.item, commit=False)  # as the far DC will serve them

                def evaluate(get: Callable[[str, np.ndarray], np.ndarray]) -> Any:
                    z = score_context(get, ev.user, ev.item, ctx,
                                      heads(get("dense", np.array(DENSE_KEYS)), spec.dim)[0]).astype(np.float64)
                    per_event = -(np.logaddexp(0.0, z) - ev.label * z)  # -logloss of each event
                    return (per_event, ev.user % SLICES) if sliced else float(per_event.mean())
                return evaluate

            def undo(at_window: int, to_witness: bool | None = None) -> list[str]:
                """Roll back in every DC (see ModelStateManager.rollback); returns who wrote the rows."""
                nonlocal restored
                t0 = time.monotonic()
                rep = mgr.rollback(lambda t, k, vals: clients[0].put(t, k, vals), to_witness)
                _wait_rows(clients, rep.restored)
                restored = rep.restored
                written([(t, k, vals) for t, (k, vals) in restored.items()], False)
                res["rollbacks"] += 1
                if res["detected"] and res["rollback_s"] is None:
                    res.update(rollback_s=time.monotonic() - t0, keys=rep.total_keys, rollback_window=at_window)
                return rep.sources

            try:
                for b in range(total):
                    lo = (b * spec.batch) % max(1, len(rest) - (window + 1) * spec.batch)
                    ev = rest.slice(lo, lo + spec.batch)
                    far_srv.serve(ev.user, ev.item, ev.label)
                    faulty = harm is not None and inject <= b < fix
                    if b == inject and harm is not None:
                        t_inject = time.monotonic()
                        pre_fault = copy.deepcopy(trainer)
                    if b == fix and harm is not None:  # the operator fixes the trainer: restarted from served rows
                        trainer = pre_fault if trainer.steps < pre_fault.steps else trainer  # the right checkpoint
                        trainer.steps = max(trainer.steps, last_step)
                        served = {t: (k, clients[0].get(t, k)[0]) for t, (k, _) in trainer.full_state().tables.items()}
                        trainer.restart(served)
                    if faulty:
                        stale = checkpoint if (harm or "").startswith("stale_replay") and b == inject else None
                        up, trainer, y = _harmful_step(harm, trainer, ev, stale)  # type: ignore[arg-type]
                    else:
                        up, y = trainer.step(ev.user, ev.item, ev.label), ev.label
                    sent = [(t, k, v) for t, (k, v) in up.tables.items()]
                    scr = mgr.screen(sent, src, trainer.steps if marked else None,  # labels vs the serving log
                                     labels=(y, ev.label, ev.user % SLICES if sliced else None))
                    last_step = trainer.steps if not scr.harmful else last_step
                    if scr.harmful:  # refused before serving: quarantine the source, undo what it wrote lately
                        res["refused"].extend(scr.refused[:2])
                        if not faulty:
                            res["false_rollbacks"] += 1
                        elif not res["detected"]:
                            res.update(detected=True, detected_by="screen", detect_s=time.monotonic() - t_inject,
                                       windows_to_detect=0, detect_window=b // window)
                        if not gate.quarantined(src):  # what it wrote since the last good window goes back
                            gate.quarantine(src, reason="; ".join(scr.refused))
                            undo(b // window, to_witness=False)
                    applied = gate.submit(src, scr.accepted)
                    if gate.quarantined(src):
                        res["held_batches"] += 1
                    else:
                        written(applied, faulty)
                    for t, k, v in applied:
                        clients[0].put(t, k, v)
                    mgr.record_batch(applied, src)
                    if b % window != window - 1:
                        continue
                    auc_by_window.append(far_srv.quality.summary()["auc"])
                    _wait_rows([far], {t: (k, v) for t, k, v in applied})  # serving reads what was written
                    nxt = rest.slice(lo + spec.batch, lo + (window + 1) * spec.batch)  # served next
                    evaluate = evaluate_on(nxt)
                    live = lambda t, k: far.get(t, k)[0]  # noqa: E731
                    v = mgr.check(evaluate, live)
                    res["harm_served_windows"] += bool(harm_keys)
                    if restored and gate.quarantined(src) and faulty:  # does the rollback hold meanwhile?
                        held_checks.append(all(np.array_equal(live(t, k), vals) for t, (k, vals) in restored.items()
                                               if k.size))
                    res["verdicts"].append([v.window, round(v.live, 4), round(v.witness, 4), v.slice])
                    if v.rollback_due:
                        if not faulty and not harm_keys:
                            res["false_rollbacks"] += 1
                        elif not res["detected"]:
                            res.update(detected=True, detected_by=f"quality ({v.slice})",
                                       detect_s=time.monotonic() - t_inject,
                                       windows_to_detect=v.window - inject_window + 1, detect_window=v.window)
                        for s_ in undo(v.window):
                            gate.quarantine(s_, reason=f"rolled back at window {v.window} ({v.slice})")
                    if gate.quarantined(src) and v.window > (res["detect_window"] or -1):
                        rev = gate.review(src, evaluate, live)
                        if rev.action == "released":
                            for t, k, vals in rev.released:
                                clients[0].put(t, k, vals)
                            mgr.record_batch(rev.released, src)
                            written(rev.released, False)
                            res["released_window"] = v.window
                    if progress:
                        progress(f"guard {harm or 'clean'}: window {v.window + 1}/{windows}")
            finally:
                for cl in clients:
                    cl.close()
    res["discarded_rows"] = gate.discarded_rows.get(src, 0)
    res["rollback_held"] = all(held_checks) if held_checks else None
    res["auc_by_window"] = auc_by_window
    after = auc_by_window[res["detect_window"] + 1:] if res["detected"] else []
    res["quality_after"] = float(np.mean(after)) if after else None  # far-DC AUC from detection to the end
    released = auc_by_window[res["released_window"] + 1:] if res["released_window"] is not None else []
    res["quality_after_release"] = float(np.mean(released)) if released else None
    last = mgr.history[-1] if mgr.history else None
    res["recovered"] = bool(last and not last.bad) and not harm_keys
    res["served_bad_rows"] = len(harm_keys)
    return res


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
    trainer, n_warm = warm_start(spec, data)
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
            servers = [_server(ps_reader(cl), spec, f"dc{d}", trainer, data.slice(0, n_warm), window=20 * spec.batch)
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
                            ctx = servers[-1].context.batch(nxt.user, nxt.item, commit=False)

                            def evaluate(get: Callable[[str, np.ndarray], np.ndarray], ev: Interactions = nxt,
                                         ctx: tuple[np.ndarray, np.ndarray] = ctx) -> float:
                                head = get("dense", np.array([0]))[0].reshape(spec.dim, spec.dim)
                                return -logloss(score_context(get, ev.user, ev.item, ctx, head), ev.label)

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
    trainer, n_warm = copy.deepcopy(warm) if warm is not None else warm_start(spec, data)
    link = make_link(tables(spec.dim), "all" if scheduler in ("all", "checkpoint") else scheduler, link_bytes_per_s,
                     delay_s=spec.rtt_ms / 2000.0, traffic_half_life_s=spec.traffic_half_life_s)
    state = trainer.full_state()
    stamp = 1
    for store in (link.src, link.dst):
        store.apply([TableUpdate(t, k, v.astype(np.float32), np.full(k.shape[0], stamp, np.int64),
                                 np.zeros(k.shape[0], np.int32)) for t, (k, v) in state.tables.items()],
                    {s: {0: stamp} for s in range(link.src.num_shards)})
    traffic = getattr(link.sender, "traffic", None)
    seen = data.slice(0, n_warm)
    local = _server(_store_reader(link.src, traffic), spec, "dc0", trainer, seen, window=len(data))
    far_read: Callable = _store_reader(link.dst)
    if scheduler == "checkpoint":
        far_read = _DictReader(state, stamp)
    far = _server(far_read, spec, "far", trainer, seen, window=len(data))
    rest = data.slice(n_warm, len(data))
    n_batches = (len(rest) + spec.batch - 1) // spec.batch
    pace = spec.replay_s / n_batches
    ckpt_every = max(1, int(n_batches * spec.checkpoint_every))
    rows = 0
    every = max(1, n_batches // 20)  # batches per point of the AUC series
    series: list[float] = []
    window_s: list[np.ndarray] = []
    window_y: list[np.ndarray] = []
    for b in range(n_batches):
        ev = rest.slice(b * spec.batch, (b + 1) * spec.batch)
        local.dense_refresh_s = far.dense_refresh_s = 0.0  # simulated time: read the head every batch
        scored = far.serve(ev.user, ev.item, ev.label)
        window_s.append(scored.logits)
        window_y.append(ev.label)
        if len(window_s) == every:
            series.append(auc(np.concatenate(window_s), np.concatenate(window_y)))
            window_s, window_y = [], []
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
            "local_auc": local.quality.summary()["auc"], "auc_series": series, "series_batches": every}
