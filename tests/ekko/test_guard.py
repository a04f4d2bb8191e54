"""Model state manager: a harmful update is detected and rolled back (in every DC); a clean stream never is."""

from __future__ import annotations

import time

import numpy as np
import pytest

from recmine.datasets import click_stream
from recmine.ekko.cluster import LocalCluster
from recmine.ekko.guard import GuardConfig, ModelStateManager
from recmine.ekko.store import ParamStore

DIM = 8
BATCH = 400
WINDOW = 5  # batches per evaluation window


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y > 0], scores[y <= 0]
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _run(inject_at: int | None, store: ParamStore, write=None, n_batches: int = 90):
    """Item rows of a factor model live in `store` (what serving reads); every batch applies small legitimate
    updates to the rows it touched; the guard compares live and witness AUC on held-out clicks every window."""
    stream = click_stream(n_users=300, n_items=400, n_events=(n_batches + 10) * BATCH, seed=3, n_factors=DIM,
                          drift_phases=1, new_item_fraction=0.0)
    hu, hi, hy = (a[n_batches * BATCH:] for a in (stream.user, stream.item, stream.label))  # held-out clicks
    rng = np.random.default_rng(0)
    U = stream.user_factors.astype(np.float32)
    V = stream.item_factors.astype(np.float32).copy()
    ids = np.arange(400)
    write = write or (lambda t, k, v: store.put(t, k, v))
    write("item", ids, V)
    guard = ModelStateManager({"item": (ids, V.copy())}, {"item": DIM},
                              GuardConfig(margin=0.03, patience=2, witness_delay=2 * WINDOW))
    live = lambda t, k: store.get(t, k)[0]  # noqa: E731 - serving reads the parameter server
    verdicts, injected_window = [], None
    for b in range(n_batches):
        lo = b * BATCH
        i = stream.item[lo:lo + BATCH]
        if b % WINDOW == 0 and b >= 2 * WINDOW:
            v = guard.check(lambda get: _auc(np.einsum("nd,nd->n", U[hu], get("item", hi)), hy), live)
            verdicts.append(v)
            if v.rollback_due:
                rep = guard.rollback(write)
                for table, (keys, vals) in rep.restored.items():  # the trainer resets its copy too
                    if table == "item":
                        V[keys] = vals
        changed = np.unique(i)
        V[changed] += 0.01 * rng.standard_normal((changed.size, DIM)).astype(np.float32)  # legitimate updates
        if inject_at is not None and b == inject_at:  # a harmful push: popular items' rows replaced by noise
            injected_window = guard.window
            bad = np.bincount(i, minlength=400).argsort()[-80:]
            V[bad] = rng.normal(0.0, 3.0, (bad.size, DIM)).astype(np.float32)
            changed = np.union1d(changed, bad)
        write("item", changed, V[changed])
        guard.record_batch([("item", changed, V[changed])])
    return guard, verdicts, injected_window


def test_harmful_update_is_detected_and_rolled_back():
    store = ParamStore({"item": DIM}, num_shards=2)
    guard, verdicts, injected = _run(inject_at=52, store=store)
    assert len(guard.rollbacks) == 1
    rep = guard.rollbacks[0]
    assert injected is not None and rep.window - injected <= 2  # patience 2: at most two windows after the harm
    assert 0 < rep.total_keys < 400  # proportional to the keys changed, not the model
    after = [v for v in verdicts if v.window > rep.window]
    assert after and all(v.live >= v.witness - 0.03 for v in after[-3:])  # back within the margin
    restored_keys, restored_vals = rep.restored["item"]
    assert restored_keys.size == rep.keys["item"]


def test_clean_stream_never_rolls_back():
    store = ParamStore({"item": DIM}, num_shards=2)
    guard, verdicts, _ = _run(inject_at=None, store=store)
    assert guard.rollbacks == [] and len(verdicts) >= 10


def test_rollback_reaches_every_dc():
    topo = {"dcs": 2, "replicas": 1, "shards": 2, "tables": {"item": DIM}, "rtt_ms": 20}
    with LocalCluster(topo) as c, c.client(c.node(0).node_id) as dc0, c.client(c.node(1).node_id) as dc1:
        ids = np.arange(50)
        good = np.ones((50, DIM), np.float32)
        dc0.put("item", ids, good)
        guard = ModelStateManager({"item": (ids, good)}, {"item": DIM}, GuardConfig(witness_delay=5))
        harm = np.full((10, DIM), -30.0, np.float32)
        dc0.put("item", ids[:10], harm)
        guard.record_batch([("item", ids[:10], harm)])
        t0 = time.perf_counter()
        rep = guard.rollback(lambda t, k, v: dc0.put(t, k, v))
        assert rep.keys == {"item": 10}
        while True:  # visible in the other DC, via ordinary dissemination
            vals, _, _ = dc1.get("item", ids)
            if np.array_equal(vals, good):
                break
            assert time.perf_counter() - t0 < 10, "rollback did not reach DC 1"
            time.sleep(0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="patience"):
        ModelStateManager({}, {"item": 2}, GuardConfig(patience=0))
    g = ModelStateManager({}, {"item": 2})
    with pytest.raises(KeyError, match="unknown table 'user'"):
        g.record_batch([("user", np.array([1]), np.ones((1, 2)))])
    with pytest.raises(ValueError, match="finite"):
        g.check(lambda get: float("nan"), lambda t, k: np.zeros((len(k), 2)))
