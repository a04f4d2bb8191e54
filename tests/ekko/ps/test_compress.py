"""Compressed deltas (ps/compress.py) through the real scheduler, protocol core and wire, in simulated time: against
an fp32 oracle replica, with error feedback nothing drifts and once the stream stops every replica holds the exact
float32 rows; a delta on the wrong base is refused by name; the link's budget is shared fairly between shards."""

from __future__ import annotations

import numpy as np
import pytest

from recmine.ekko.lab.linksim import make_link
from recmine.ekko.ps.compress import ABS, DELTA, RAW, Codec, decode, encode, parse_scheduler
from recmine.ekko.ps.core import Core, Member, Membership
from recmine.ekko.ps.scheduler import ROW_OVERHEAD, SloScheduler
from recmine.ekko.ps.store import ParamStore, TableUpdate
from recmine.ekko.ps.sync import Asker, Responder
from recmine.ekko.ps.wire import pb_to_rows, rows_to_pb, stubs

DIM = 12


def _training_like_stream(link, oracle, rng, steps: int, keys: int = 300) -> float:
    """Steps of small changes to random rows (most small, a few large, some new keys), written to both sources;
    returns the largest distance seen between the compressed replica and the source over delivered versions."""
    state = rng.normal(size=(keys, DIM)).astype(np.float32)
    worst = 0.0
    for step in range(steps):
        k = np.unique(rng.integers(0, keys if step > 5 else keys // 2, 60))
        jump = rng.random(k.size) < 0.1
        state[k] += np.where(jump[:, None], 0.5, 0.01) * rng.normal(size=(k.size, DIM)).astype(np.float32)
        for lk in (link, oracle):
            lk.src.put("emb", k, state[k])
            lk.advance(0.05)
        src_v, _, src_ts = link.src.get("emb", np.arange(keys))
        dst_v, found, dst_ts = link.dst.get("emb", np.arange(keys))
        same = found & (src_ts == dst_ts)
        if same.any():  # a delivered version is off by at most the residual the codec may leave
            err = np.linalg.norm(src_v[same] - dst_v[same], axis=1) / np.linalg.norm(src_v[same], axis=1)
            worst = max(worst, float(err.max()))
    return worst


@pytest.mark.parametrize("codec", ["int8", "fp16"])
def test_compressed_deltas_end_exact_and_never_drift(codec):
    rng = np.random.default_rng(0)
    link = make_link({"emb": DIM}, f"slo+{codec}@0.05", bytes_per_s=60_000)
    plain = make_link({"emb": DIM}, "slo", bytes_per_s=60_000)
    oracle = make_link({"emb": DIM}, "all")  # fp32, unthrottled
    worst = _training_like_stream(link, oracle, rng, 120)
    rng = np.random.default_rng(0)
    _training_like_stream(plain, make_link({"emb": DIM}, "all"), rng, 120)
    assert worst < 0.2  # bounded by the significance threshold and one quantisation step: no accumulation
    assert link.wire_bytes < 0.7 * plain.wire_bytes  # fewer bytes for the same stream through the same link
    took = link.settle(max_s=30.0)  # the stream stopped and the link clears: exact float32 everywhere
    assert took < 10.0
    for a, b in zip(link.src.state_digest()["emb"], link.dst.state_digest()["emb"], strict=True):
        assert np.array_equal(a, b)  # keys, values (bit for bit), versions and origins
    keys, values = link.dst.state_digest()["emb"][:2]
    want_keys, want = oracle.dst.state_digest()["emb"][:2]
    assert np.array_equal(keys, want_keys) and np.array_equal(values, want)  # the fp32 oracle's rows


def test_codec_quantises_within_half_a_step_and_falls_back_to_exact_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, DIM)).astype(np.float32) * rng.uniform(0.01, 100, (50, 1)).astype(np.float32)
    c = Codec("int8")
    q, scale = c.quantize(x)
    assert q.dtype == np.int8 and np.all(np.abs(q.astype(np.float32) * scale[:, None] - x) <= scale[:, None] / 2 + 1e-6)
    up = TableUpdate("emb", np.arange(3), np.array([[1e6] * DIM, [1.0] * DIM, [0.5] * DIM], np.float32),
                     np.full(3, 10), np.zeros(3, np.int32))
    held = np.zeros((3, DIM), np.float32)
    parts = encode(Codec("fp16"), up, np.array([ABS, DELTA, RAW]), held, np.array([0, 7, 7]))
    raw = next(p for p in parts if not hasattr(p, "codes"))
    assert sorted(raw.keys.tolist()) == [0, 2]  # fp16 overflow goes exact, as does a RAW row
    packed = next(p for p in parts if hasattr(p, "codes"))
    assert packed.keys.tolist() == [1] and packed.base_ts.tolist() == [7] and packed.origin.tolist() == [0]
    assert Codec("int8").cost(DIM, np.array([RAW, ABS, DELTA])).tolist() == [ROW_OVERHEAD + 4 * DIM,
                                                                            ROW_OVERHEAD + DIM + 4,
                                                                            ROW_OVERHEAD + DIM + 4 + 8]


def test_a_delta_on_the_wrong_base_is_refused_by_name_or_dropped_when_it_lost_anyway():
    store = ParamStore({"emb": DIM}, 1, node_id=1)
    store.apply([TableUpdate("emb", np.array([5]), np.ones((1, DIM), np.float32), np.array([100]),
                             np.array([0], np.int32))])
    codes, scale = np.ones((1, DIM), np.int8), np.ones(1, np.float32)
    ok = decode("emb", np.array([5]), np.array([200]), np.array([-1]), 2, codes, scale, np.array([100]), store)
    np.testing.assert_array_equal(ok.values, 2 * np.ones((1, DIM)))  # held + delta
    with pytest.raises(ValueError, match="key 5 applies to version 50, this store holds version 100"):
        decode("emb", np.array([5]), np.array([200]), np.array([-1]), 2, codes, scale, np.array([50]), store)
    lost = decode("emb", np.array([5]), np.array([90]), np.array([-1]), 2, codes, scale, np.array([50]), store)
    assert len(lost) == 0  # the held version is newer than the delta's: last-writer-wins would drop it anyway
    pb2, _ = stubs()
    msg = rows_to_pb(pb2, encode(Codec("int8"), TableUpdate("emb", np.array([1]), np.ones((1, DIM), np.float32),
                                                            np.array([3]), np.array([0], np.int32)),
                                 np.array([ABS]), np.zeros((1, DIM), np.float32), np.zeros(1, np.int64))[0])
    with pytest.raises(ValueError, match="compressed rows are accepted only from a peer's Pull"):
        pb_to_rows(msg, {"emb": DIM})
    msg.scales = b"\x00\x00\xc0\x7f"  # NaN scale
    with pytest.raises(ValueError, match="non-finite"):
        pb_to_rows(msg, {"emb": DIM}, store)


def test_a_core_decodes_compressed_rows_handed_in_memory_as_the_wire_does():
    """Rows that reach a core without the wire (servers sharing a process, the simulator) are decoded against its
    store like rows off the wire: a delta adds to the held row, and a delta on a base it does not hold is refused."""
    cores = [Core(n, Membership([Member(0, 0, 0), Member(1, 1, 0)], 2), ParamStore({"emb": DIM}, 1, node_id=n))
             for n in (0, 1)]
    far = cores[1]
    (sub,) = far.start(0.0)
    held = np.full((1, DIM), 0.5, np.float32)
    far.store.apply([TableUpdate("emb", np.array([5]), held, np.array([100]), np.array([0], np.int32))])
    target = held + np.linspace(-1, 1, DIM, dtype=np.float32)[None]
    delta = encode(Codec("int8"), TableUpdate("emb", np.array([5]), target, np.array([200]), np.array([0], np.int32)),
                   np.array([DELTA]), held, np.array([100]))[-1]
    assert delta.codes is not None and delta.scale is not None
    assert far.batch(sub.call, [delta], True, False, {}, 0, 1, cores[0].incarnation) == 1
    want = held.astype(np.float64) + delta.codes.astype(np.float64) * np.float64(delta.scale[0])  # fp64 oracle
    np.testing.assert_allclose(far.store.get("emb", np.array([5]))[0], want, rtol=0, atol=1e-6)
    stale = encode(Codec("int8"), TableUpdate("emb", np.array([5]), target + 1, np.array([300]),
                                              np.array([0], np.int32)), np.array([DELTA]), held, np.array([100]))[-1]
    with pytest.raises(ValueError, match="key 5 applies to version 100, this store holds version 200"):
        far.batch(sub.call, [stale], True, False, {}, 0, 2, cores[0].incarnation)


def test_scheduler_specs_name_their_codec():
    assert parse_scheduler("slo") == ("slo", None)
    assert parse_scheduler("fifo+fp16@0.1") == ("fifo", Codec("fp16", 0.1))
    assert SloScheduler("slo+int8").codec == Codec("int8", 0.05)
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        SloScheduler("slo+zip")
    with pytest.raises(ValueError, match="significance after '@' must be a number"):
        parse_scheduler("slo+int8@x")
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        SloScheduler("lifo+int8")


def test_shard_streams_share_the_link_fairly():
    """Two shards' streams pick in turn from one link budget, always shard 0 first: each gets about half. (One
    bucket shared first-come gave shard 0 all of it, round after round.)"""
    t = [0.0]
    sched = SloScheduler("fifo", bytes_per_s=200 * (ROW_OVERHEAD + 4 * DIM), round_s=0.05, clock=lambda: t[0])
    src, dst = ParamStore({"emb": DIM}, 2, node_id=0), ParamStore({"emb": DIM}, 2, node_id=1)
    askers = [Asker(dst, s, 0) for s in range(2)]
    sent = [0, 0]
    rng = np.random.default_rng(3)
    calls = []
    for s, a in enumerate(askers):
        vv, since, inc, applied = a.request()
        calls.append(Responder(src, sched, s, vv, since, 1, 0, None, applied, 1 << 30, inc))
    for _ in range(40):
        src.put("emb", np.arange(400), rng.normal(size=(400, DIM)).astype(np.float32))
        t[0] += 0.05
        for s in range(2):
            cs = calls[s].changes()
            rnd = calls[s].pick(cs)
            askers[s].batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id)
            sent[s] += sum(len(u) for u in rnd.updates)
    assert min(sent) > 0.35 * sum(sent), sent


def test_far_dcs_share_the_link_evenly():
    """Three far DCs (two shards each) pull through one sender's budget, always in the same order, each with more
    changes than the link carries: each DC gets about a third. (A share of the tokens left when a stream came gave
    the first DC twice the bytes of the last, and the last was served as stale as under FIFO.)"""
    t = [0.0]
    sched = SloScheduler("slo", bytes_per_s=300 * (ROW_OVERHEAD + 4 * DIM), round_s=0.05, clock=lambda: t[0])
    src = ParamStore({"emb": DIM}, 2, node_id=0)
    rng = np.random.default_rng(4)
    calls, askers = {}, {}
    for dc in (1, 2, 3):
        dst = ParamStore({"emb": DIM}, 2, node_id=dc)
        for s in range(2):
            a = askers[dc, s] = Asker(dst, s, 0)
            vv, since, inc, applied = a.request()
            calls[dc, s] = Responder(src, sched, s, vv, since, dc, 0, None, applied, 1 << 30, inc)
    sent = dict.fromkeys((1, 2, 3), 0)
    for _ in range(40):
        src.put("emb", np.arange(600), rng.normal(size=(600, DIM)).astype(np.float32))
        t[0] += 0.05
        for (dc, s), call in calls.items():
            cs = call.changes()
            rnd = call.pick(cs)
            askers[dc, s].batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id)
            sent[dc] += sum(len(u) for u in rnd.updates)
    total = sum(sent.values())
    assert total > 0.9 * 40 * 300 * 0.05 * 0.9  # the link stays busy
    assert min(sent.values()) > 0.3 * total, sent


def test_a_row_bigger_than_a_rounds_share_does_not_block_the_queue():
    """A dense row of 1 KB behind a link whose round share is ~300 B: it goes when the link has credit (the bucket
    runs into debt) instead of sitting at the head of the queue forever with everything else behind it."""
    t = [0.0]
    sched = SloScheduler("fifo", bytes_per_s=6_000, round_s=0.05, clock=lambda: t[0])
    src, dst = ParamStore({"dense": 256, "emb": 4}, 1, node_id=0), ParamStore({"dense": 256, "emb": 4}, 1, node_id=1)
    src.put("dense", np.array([0]), np.ones((1, 256), np.float32))  # oldest change: first in the FIFO
    src.put("emb", np.arange(50), np.ones((50, 4), np.float32))
    asker = Asker(dst, 0, 0)
    for _ in range(60):
        t[0] += 0.05
        vv, since, inc, applied = asker.request()
        call = Responder(src, sched, 0, vv, since, 1, 0, None, applied, 1 << 30, inc)
        cs = call.changes()
        rnd = call.pick(cs)
        asker.batch(rnd.updates, True, rnd.complete, cs.version_vector, cs.counter, rnd.id)
    assert dst.get("dense", np.array([0]))[1].all() and dst.get("emb", np.arange(50))[1].all()
