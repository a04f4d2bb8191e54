"""Model state manager: a harmful update is detected and rolled back (in every DC); a clean stream never is."""

from __future__ import annotations

import time

import numpy as np
import pytest

from recmine.datasets import click_stream
from recmine.ekko.lab.cluster import LocalCluster
from recmine.ekko.ps.store import ParamStore
from recmine.ekko.rec.guard import GuardConfig, ModelStateManager, Quarantine, Verdict

DIM = 8
BATCH = 400
WINDOW = 5  # batches per evaluation window


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y > 0], scores[y <= 0]
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _run(inject_at: int | None, store: ParamStore, write=None, n_batches: int = 90, fault_until: int | None = None,
         gate: Quarantine | None = None, watch: list | None = None):
    """Item rows of a factor model live in `store` (what serving reads); every batch applies small legitimate
    updates to the rows it touched; the guard compares live and witness AUC on held-out clicks every window.

    A fault at `inject_at` replaces popular items' rows with noise; with `fault_until` the faulty trainer keeps
    doing so every batch until then (when the operator restarts it from the served rows). With `gate`, a rollback
    quarantines the sources it names and their updates go through the gate; `watch` gets, after every batch
    while a rollback is in force and the trainer faulty, whether the store still serves the restored rows."""
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
    evaluate = lambda get: _auc(np.einsum("nd,nd->n", U[hu], get("item", hi)), hy)  # noqa: E731
    verdicts, injected_window, restored = [], None, None
    last = inject_at if fault_until is None else fault_until - 1
    for b in range(n_batches):
        lo = b * BATCH
        i = stream.item[lo:lo + BATCH]
        if b % WINDOW == 0 and b >= 2 * WINDOW:
            v = guard.check(evaluate, live)
            verdicts.append(v)
            held = gate is not None and gate.quarantined("trainer")
            if v.rollback_due:
                rep = guard.rollback(write)
                restored = rep.restored["item"]
                if gate is None:  # the trainer resets its copy too
                    for table, (keys, vals) in rep.restored.items():
                        if table == "item":
                            V[keys] = vals
                else:
                    for source in rep.sources:
                        gate.quarantine(source)
            if held:
                rev = gate.review("trainer", evaluate, live)
                for table, keys, vals in rev.released:
                    write(table, keys, vals)
                guard.record_batch(rev.released)
        if fault_until is not None and b == fault_until:  # the operator restarts the trainer from what is served
            V[:] = store.get("item", ids)[0]
        changed = np.unique(i)
        V[changed] += 0.01 * rng.standard_normal((changed.size, DIM)).astype(np.float32)  # legitimate updates
        if inject_at is not None and inject_at <= b <= last:  # harmful pushes: popular items' rows as noise
            injected_window = guard.window if injected_window is None else injected_window
            bad = np.bincount(i, minlength=400).argsort()[-80:]
            V[bad] = rng.normal(0.0, 3.0, (bad.size, DIM)).astype(np.float32)
            changed = np.union1d(changed, bad)
        update = [("item", changed, V[changed].copy())]
        applied = gate.submit("trainer", update) if gate is not None else update
        for table, keys, vals in applied:
            write(table, keys, vals)
        guard.record_batch(applied)
        if watch is not None and restored is not None and b <= last:
            watch.append(np.array_equal(store.get("item", restored[0])[0], restored[1]))
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
    assert rep.sources == ["trainer"]  # who wrote since the last good window: the source to quarantine


def test_rollback_holds_while_the_faulty_trainer_keeps_sending():
    """The faulty trainer sends harmful rows for 25 more batches after the rollback. Without a quarantine every
    later push undoes the rollback (the guard must roll back again and again); with it the restored rows stay
    served, the harmful updates are held and discarded, and after the operator's fix the healthy updates are
    released after two healthy shadow windows and quality is back within the margin."""
    guard, verdicts, _ = _run(inject_at=40, fault_until=65, store=ParamStore({"item": DIM}, num_shards=2))
    assert len(guard.rollbacks) >= 3 and sum(v.bad for v in verdicts) >= 6  # no quarantine: it does not hold

    store, gate, watch = ParamStore({"item": DIM}, num_shards=2), Quarantine(margin=0.03, release_after=2), []
    guard, verdicts, injected = _run(inject_at=40, fault_until=65, store=store, gate=gate, watch=watch)
    assert len(guard.rollbacks) == 1 and guard.rollbacks[0].window - injected <= 2
    assert len(watch) >= 15 and all(watch)  # the restored rows stayed served while the trainer kept sending
    actions = [r.action for r in gate.reviews]
    assert actions[: actions.index("holding")].count("discarded") >= 3  # harmful held rows thrown away
    assert actions[-1] == "released" and not gate.quarantined("trainer")  # healthy rows released after the fix
    assert gate.held_total["trainer"] >= 25 and gate.discarded_rows["trainer"] > 0
    assert all(v.live >= v.witness - 0.03 for v in verdicts[-3:]) and not any(v.bad for v in verdicts[-5:])


def _getter(rows: dict[int, float]):
    return lambda table, keys: np.array([[rows.get(int(k), 0.0)] for k in keys], np.float32)


def test_quarantine_holds_judges_in_shadow_and_releases():
    q = Quarantine(margin=0.1, release_after=2)
    up = [("item", np.array([1, 2]), np.array([[5.0], [6.0]], np.float32))]
    assert q.submit("a", up) is up  # a trusted source passes straight through
    q.quarantine("a", "rolled back")
    assert q.quarantined("a") and q.sources == ["a"] and q.reasons["a"] == "rolled back"
    assert q.submit("a", up) == [] and q.submit("b", up) is up  # only the quarantined source is held
    q.submit("a", [("item", np.array([2]), np.array([[9.0]], np.float32))])  # latest value per key wins
    assert q.held_rows("a") == 2 and q.held_total["a"] == 2
    served = _getter({1: 1.0, 2: 1.0, 3: 1.0})
    shadow = q.overlay("a", served)
    np.testing.assert_array_equal(shadow("item", np.array([3, 2, 1])), [[1.0], [9.0], [5.0]])
    quality = lambda get: -float(np.abs(get("item", np.array([1, 2, 3])) - 1.0).mean())  # noqa: E731
    rev = q.review("a", quality, served)  # the held rows hurt: thrown away, still held
    assert (rev.action, rev.healthy, rev.held_rows) == ("discarded", False, 2) and rev.shadow < rev.served
    assert q.quarantined("a") and q.held_rows("a") == 0 and q.discarded_rows["a"] == 2
    q.submit("a", [("item", np.array([3]), np.array([[1.05]], np.float32))])
    assert q.review("a", quality, served).action == "holding"  # healthy once: not yet
    rev = q.review("a", quality, served)
    assert rev.action == "released" and not q.quarantined("a")
    (table, keys, vals), = rev.released
    assert table == "item" and keys.tolist() == [3] and vals.tolist() == [[pytest.approx(1.05)]]
    assert q.submit("a", up) is up  # trusted again
    q.quarantine("a")
    q.submit("a", up)
    released = q.release("a")  # the operator's release, at any time
    assert [k.tolist() for _, k, _ in released] == [[1, 2]] and not q.quarantined("a")


def test_quarantine_bad_input_is_named():
    with pytest.raises(ValueError, match="release_after"):
        Quarantine(release_after=0)
    with pytest.raises(ValueError, match="margin"):
        Quarantine(margin=-1.0)
    q = Quarantine()
    with pytest.raises(KeyError, match="'x' is not quarantined"):
        q.review("x", lambda get: 0.0, _getter({}))
    with pytest.raises(KeyError, match="'x' is not quarantined"):
        q.release("x")
    q.quarantine("x")
    with pytest.raises(ValueError, match="finite"):
        q.review("x", lambda get: float("nan"), _getter({}))


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


def test_rollback_resets_keys_born_after_the_witness_horizon():
    """A key the witness never saw (born within its delay) goes back to the zero prior, not left harmful."""
    store = ParamStore({"item": 2}, num_shards=1)
    g = ModelStateManager({"item": (np.array([1]), np.ones((1, 2), np.float32))}, {"item": 2},
                          GuardConfig(witness_delay=3))
    harm = np.full((2, 2), 40.0, np.float32)
    store.put("item", np.array([1, 7]), harm)
    g.record_batch([("item", np.array([1, 7]), harm)])
    rep = g.rollback(lambda t, k, v: store.put(t, k, v))
    assert rep.unrecoverable == {"item": 1} and rep.keys == {"item": 2}
    np.testing.assert_array_equal(store.get("item", np.array([1, 7]))[0], [[1.0, 1.0], [0.0, 0.0]])


def test_screen_refuses_nan_exploding_rows_and_a_step_going_back_by_name():
    rows = np.ones((20, 2), np.float32)
    g = ModelStateManager({"item": (np.arange(20), rows), "dense": (np.array([0]), np.ones((1, 2), np.float32))},
                          {"item": 2, "dense": 2}, GuardConfig(norm_factor=50.0))
    ok = [("item", np.array([1, 2]), np.full((2, 2), 3.0, np.float32))]
    assert g.screen(ok, "t", step=10).accepted == ok  # within 50x of the typical norm
    bad = [("item", np.array([7, 8]), np.array([[1.0, np.nan], [np.inf, 0.0]], np.float32))]
    scr = g.screen(bad, "t", step=11)
    assert scr.harmful and scr.accepted == [] and scr.refused == [
        "table 'item': non-finite value (NaN/Inf) in 2 row(s), first key 7"]
    boom = [("dense", np.array([0]), np.full((1, 2), 1000.0, np.float32))]
    (msg,) = g.screen(boom, "t", step=12).refused
    assert msg.startswith("table 'dense': row norm 1.41e+03 for key 0 is 1000x") and "(exploding)" in msg
    (msg,) = g.screen(ok, "t", step=4).refused
    assert msg == "source 't': model step 4 went back from 10 (a stale checkpoint replayed)"
    assert g.screen(ok, "other", step=4).accepted == ok  # steps are per source


def test_screen_refuses_a_stale_model_replayed_without_its_step():
    """Rows that go back in content to earlier published values (a trainer restarted from an old checkpoint that
    sends no model step) are refused by name; a long clean random walk, the same rows re-sent unchanged, and a few
    rows going back are not."""
    rng = np.random.default_rng(1)
    ids = np.arange(200)
    rows = rng.normal(size=(200, 4)).astype(np.float32)
    g = ModelStateManager({"item": (ids, rows)}, {"item": 4}, GuardConfig(replay_rows=16, replay_share=0.2))
    checkpoint = rows.copy()
    for _ in range(100):  # clean training: each batch moves the rows it touches a little
        keys = rng.choice(ids, 60, replace=False)
        rows[keys] += rng.normal(0, 0.01, (60, 4)).astype(np.float32)
        up = [("item", keys, rows[keys].copy())]
        assert g.screen(up, "t").accepted == up
        g.record_batch(up, "t")
    same = [("item", ids, rows.copy())]  # a full push of the current model: nothing changes, nothing goes back
    assert g.screen(same, "t").accepted == same
    few = [("item", ids[:10], checkpoint[:10])]  # 10 rows back: below replay_rows
    assert not g.screen(few, "t").harmful
    fresh = rows.copy()
    fresh[:140] += 0.5  # the replayed model trained a few batches before its push: most rows new, the rest stale
    replay = [("item", ids, np.concatenate([fresh[:140], checkpoint[140:]]))]
    (msg,) = g.screen(replay, "t").refused
    assert msg == "source 't': 60 of 200 changed rows go back to values their keys held before (a stale model " \
                  "replayed, or rolled-back values re-sent)"


def test_screen_refuses_labels_that_differ_from_the_serving_log():
    """The labels a batch was trained on are checked against the feedback serving logged for the same events:
    every label flipped, or one cohort's, is refused naming the worst slice; equal labels, or a few late changes
    within the tolerance, are not."""
    rng = np.random.default_rng(2)
    logged = (rng.random(800) < 0.6).astype(np.float32)
    cohort = rng.integers(0, 8, 800)
    g = ModelStateManager({}, {"item": 2}, GuardConfig(label_tolerance=0.05))
    up = [("item", np.array([1]), np.ones((1, 2), np.float32))]
    assert g.screen(up, "t", labels=(logged.copy(), logged, cohort)).accepted == up
    late = logged.copy()
    late[:16] = 1.0 - late[:16]  # 2% of the events changed: tolerated
    assert not g.screen(up, "t", labels=(late, logged, cohort)).harmful
    (msg,) = g.screen(up, "t", labels=(1.0 - logged, logged)).refused
    assert msg == "source 't': 800 of 800 trained labels (all events) differ from the feedback serving logged " \
                  "(labels corrupted in training)"
    one = np.where(cohort == 5, 1.0 - logged, logged)
    (msg,) = g.screen(up, "t", labels=(one, logged, cohort)).refused
    assert f"of {(cohort == 5).sum()} trained labels (cohort 5) differ" in msg
    with pytest.raises(ValueError, match="one length"):
        g.screen(up, "t", labels=(logged[:5], logged))
    with pytest.raises(ValueError, match="0 <= label_tolerance < 1"):
        ModelStateManager({}, {"item": 2}, GuardConfig(label_tolerance=1.0))


def test_cohort_check_catches_harm_confined_to_one_cohort_and_not_noise():
    """Per-event quality with cohorts: live is fresher than the witness everywhere (+0.04); a harm costing one
    cohort 0.1 alarms on that cohort; the same noise without harm, or a harm on a cohort too small to judge,
    does not."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 8, 2000)
    groups[:20] = 9  # a cohort of 20 events: too few to judge
    witness = rng.normal(-0.6, 0.4, 2000)

    def run(harm: float, on: int) -> Verdict:
        g = ModelStateManager({}, {"item": 2}, GuardConfig(margin=0.05, slice_margin=0.03, slice_z=3.0))
        live = witness + 0.04 + rng.normal(0, 0.05, 2000) - np.where(groups == on, harm, 0.0)
        return g.check(lambda get: (live if get is None else witness, groups), None)  # None: the live getter

    v = run(0.1, 3)
    assert v.bad and v.slice == "cohort 3" and v.live > v.witness  # the whole window still looks fine
    assert not run(0.0, 3).bad
    assert not run(0.5, 9).bad
    with pytest.raises(ValueError, match="equal, non-zero length"):
        ModelStateManager({}, {"item": 2}).check(lambda get: (np.ones(3), np.ones(2)), None)


def test_rollback_to_the_witness_undoes_harm_that_passed_earlier_windows():
    store = ParamStore({"item": 2}, num_shards=1)
    good = np.ones((4, 2), np.float32)
    g = ModelStateManager({"item": (np.arange(4), good)}, {"item": 2}, GuardConfig(witness_delay=5))
    harm = np.full((1, 2), 9.0, np.float32)
    for key in range(3):  # harm written to keys 0..2 over three batches; a good window passes in between
        store.put("item", np.array([key]), harm)
        g.record_batch([("item", np.array([key]), harm)])
        if key == 1:
            g.check(lambda get: 1.0, lambda t, k: store.get(t, k)[0])  # good: keys 0, 1 are now "since good"-clean
    assert g.rollback(lambda t, k, v: store.put(t, k, v), to_witness=False).keys == {"item": 1}
    np.testing.assert_array_equal(store.get("item", np.arange(3))[0][:2], np.full((2, 2), 9.0))  # harm stays
    g2 = ModelStateManager({"item": (np.arange(4), good)}, {"item": 2}, GuardConfig(witness_delay=5, to_witness=True))
    for key in range(3):
        store.put("item", np.array([key]), harm)
        g2.record_batch([("item", np.array([key]), harm)])
        if key == 1:
            g2.check(lambda get: 1.0, lambda t, k: store.get(t, k)[0])
    assert g2.rollback(lambda t, k, v: store.put(t, k, v)).keys == {"item": 3}
    np.testing.assert_array_equal(store.get("item", np.arange(3))[0], good[:3])  # back to the witness everywhere
