"""faery retrieval service: exact results over the wire, consistency under concurrent writes, crash safety
(SIGKILL, torn log tail), group commit, bad input -> status codes, and the `retrieve serve` command."""

from __future__ import annotations

import bisect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from recmine.faery import wal as wal_mod
from recmine.faery.client import Client, connect, stubs
from recmine.faery.exact import brute_force_topk
from recmine.faery.service import RetrievalCore, RetrievalServer

D = 16
REPO = Path(__file__).resolve().parents[2]


def vec_of(i: int, gen: int = 0) -> np.ndarray:
    """The deterministic vector the crash child writes for id i."""
    return np.random.default_rng([i, gen]).standard_normal(D).astype(np.float32)


@pytest.fixture
def start_server(tmp_path):
    """Start servers on 127.0.0.1:0 with a bounded lifetime; all are stopped at teardown."""
    servers: list[RetrievalServer] = []
    clients: list[Client] = []

    def start(sub: str = "idx", **kw) -> tuple[RetrievalServer, Client]:
        kw.setdefault("lifetime_s", 55.0)
        srv = RetrievalServer(tmp_path / sub, port=0, **kw)
        srv.start()
        servers.append(srv)
        client = connect(srv.address, timeout=10.0)
        clients.append(client)
        return srv, client

    yield start
    for c in clients:
        c.close()
    for s in servers:
        s.stop(grace=0.2, checkpoint=False)


def _live_arrays(live: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(sorted(live), np.int64)
    return np.stack([live[i] for i in ids.tolist()]) if ids.size else np.zeros((0, D), np.float32), ids


def _check_exact(client: Client, live: dict[int, np.ndarray], metric: str, rng: np.random.Generator) -> None:
    x, ids = _live_arrays(live)
    q = rng.standard_normal((7, D)).astype(np.float32)
    for k in (1, 10, 100):
        got_s, got_i = client.search(q, k)
        want_s, want_i = brute_force_topk(x, ids, q, k, metric)
        np.testing.assert_array_equal(got_i, want_i, err_msg=f"{metric} k={k}")
        np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5 * (1 + np.abs(want_s).max()))


# ------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_wire_results_equal_brute_force(start_server, metric):
    rng = np.random.default_rng(7)
    srv, client = start_server(dim=D, metric=metric, storage="fp32", fold_rows=100_000, fold_tombstones=100_000)
    x = rng.standard_normal((1200, D)).astype(np.float32)
    ids = rng.permutation(5000)[:1200].astype(np.int64)
    client.add(x[:600], ids[:600])
    client.add(x[600:], ids[600:])
    live = dict(zip(ids.tolist(), x, strict=True))
    srv.core.fold()  # a base index, then live changes on top of it
    for _ in range(60):  # replacements, fresh ids and deletes: a delta plus tombstones
        pick = rng.choice(list(live), size=3, replace=False).tolist()
        v = rng.standard_normal((3, D)).astype(np.float32)
        client.add(v, pick)
        live.update(zip(pick, v, strict=True))
        v = rng.standard_normal((2, D)).astype(np.float32)
        new = client.add(v)  # server-assigned ids
        assert not set(new.tolist()) & set(live)
        live.update(zip(new.tolist(), v, strict=True))
        gone = rng.choice(list(live), size=2, replace=False).tolist()
        assert client.remove(gone) == 2
        for g in gone:
            del live[g]
    st = client.stats()
    assert st["live"] == len(live) and st["delta_rows"] > 0 and st["tombstones"] > 0
    _check_exact(client, live, metric, rng)
    srv.core.fold()
    assert client.stats()["delta_rows"] == 0
    _check_exact(client, live, metric, rng)
    np.testing.assert_array_equal(np.sort(srv.core.ids()), np.array(sorted(live)))


# ------------------------------------------------------------------------------------------------ consistency
def test_concurrent_writers_and_readers_are_consistent(start_server):
    """2 writers upsert/delete while 2 readers search over the wire; every result is checked against the rows
    acknowledged (or deleted) before the search began, and exactly against the version the server reports."""
    rng0 = np.random.default_rng(11)
    srv, client = start_server(dim=D, storage="fp32", fold_rows=48, fold_tombstones=24, checkpoint_bytes=30_000)
    n0 = 1500
    init = rng0.standard_normal((n0, D)).astype(np.float32)
    _, v0 = client.upsert(np.arange(n0), init)
    duration = 3.0
    writes: list[tuple[float, float, int, str, list[int], np.ndarray | None]] = []
    searches: list[tuple[float, float, int, np.ndarray, int, np.ndarray, np.ndarray]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def writer(w: int) -> None:
        try:
            rng = np.random.default_rng(100 + w)
            c = connect(srv.address)
            mine = {i for i in range(n0) if i % 2 == w}
            while time.monotonic() < stop_at:
                if rng.random() < 0.55 or len(mine) < 10:
                    ids = sorted({int(i) * 2 + w for i in rng.integers(0, 1500, size=rng.integers(1, 4))})
                    v = rng.standard_normal((len(ids), D)).astype(np.float32)
                    t0 = time.monotonic()
                    _, lsn = c.upsert(ids, v)
                    t1 = time.monotonic()
                    mine.update(ids)
                    rec = (t0, t1, lsn, "u", ids, v)
                else:
                    ids = sorted(int(i) for i in rng.choice(sorted(mine), size=rng.integers(1, 3), replace=False))
                    t0 = time.monotonic()
                    _, lsn = c.delete(ids)
                    t1 = time.monotonic()
                    mine.difference_update(ids)
                    rec = (t0, t1, lsn, "d", ids, None)
                with lock:
                    writes.append(rec)
            c.close()
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    def reader(r: int) -> None:
        try:
            rng = np.random.default_rng(200 + r)
            c = connect(srv.address)
            while time.monotonic() < stop_at:
                q = rng.standard_normal((int(rng.integers(1, 4)), D)).astype(np.float32)
                k = int(rng.choice([1, 10, 40]))
                t0 = time.monotonic()
                s, i, ver = c.search_versioned(q, k)
                t1 = time.monotonic()
                with lock:
                    searches.append((t0, t1, ver, q, k, s, i))
            c.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=reader, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    st = client.stats()
    assert len(writes) > 50 and len(searches) > 50, (len(writes), len(searches))
    assert st["folds"] > 0 and st["checkpoints"] > 0  # folds and checkpoints raced with the searches
    print(f"{len(writes)} writes, {len(searches)} searches, {st['folds']} folds, {st['checkpoints']} checkpoints, "
          f"{st['wal_syncs']} fsyncs for {st['wal_records']} records")

    writes.sort(key=lambda w: w[2])
    lsns = [w[2] for w in writes]
    assert len(set(lsns)) == len(lsns) and lsns[0] > v0
    violations: list[str] = []

    # (1) real-time bounds on the reported version: it covers every write acknowledged before the search began
    # and nothing that had not started when it ended
    by_ack = sorted((w[1], w[2]) for w in writes)
    by_start = sorted((w[0], w[2]) for w in writes)
    ack_t, ack_max = [a for a, _ in by_ack], np.maximum.accumulate([v0] + [lsn for _, lsn in by_ack])
    st_t, st_max = [a for a, _ in by_start], np.maximum.accumulate([v0] + [lsn for _, lsn in by_start])
    for t0, t1, ver, *_ in searches:
        lo = ack_max[bisect.bisect_left(ack_t, t0)]
        hi = st_max[bisect.bisect_left(st_t, t1)]
        if not lo <= ver <= hi:
            violations.append(f"version {ver} outside [{lo}, {hi}]")

    # (2) time-based oracle, independent of the reported version: ids whose state was settled (no write in
    # flight during the search) must be in or out of the result exactly as the acknowledged writes say
    space = 3000
    present = np.zeros(space, bool)
    present[:n0] = True
    xs = np.zeros((space, D), np.float64)
    xs[:n0] = init
    by_t1 = sorted(writes, key=lambda w: w[1])
    by_t0 = sorted(writes, key=lambda w: w[0])
    starts = [w[0] for w in by_t0]
    longest = max(w[1] - w[0] for w in writes)
    wi = 0
    for t0, t1, _, q, k, s, got in sorted(searches, key=lambda x: x[0]):
        while wi < len(by_t1) and by_t1[wi][1] < t0:  # acknowledged before the search began
            _, _, _, op, ids, v = by_t1[wi]
            present[ids] = op == "u"
            if op == "u":
                xs[ids] = v
            wi += 1
        settled = np.ones(space, bool)
        lo = bisect.bisect_left(starts, t0 - longest - 1e-6)
        for w in by_t0[lo: bisect.bisect_left(starts, t1)]:
            if w[1] >= t0:  # in flight during the search: may or may not be seen
                settled[w[4]] = False
        must_in = np.flatnonzero(settled & present)
        must_out = settled & ~present
        for qi in range(q.shape[0]):
            row, srow = got[qi], s[qi]
            sc = xs[must_in] @ q[qi].astype(np.float64)
            real = row[row >= 0]
            if must_out[real].any():
                violations.append(f"returned ids {real[must_out[real]].tolist()} deleted/absent before the search")
            if real.size < k and must_in.size >= k:
                violations.append("padding although enough acknowledged rows were live")
            pos = np.searchsorted(must_in, real)
            hit = (pos < must_in.size) & (must_in[np.minimum(pos, must_in.size - 1)] == real)
            if hit.any():
                err = np.abs(sc[pos[hit]] - srow[: real.size][hit])
                if (err > 1e-4 * (1 + np.abs(srow[: real.size][hit]))).any():
                    violations.append("a returned score differs from the acknowledged vector's score")
            kth = srow[-1] if row[-1] != -1 else -np.inf
            missing = set(must_in[sc > kth + 1e-4 * (1 + abs(kth))].tolist()) - set(real.tolist())
            if missing:
                violations.append(f"search missed acknowledged ids {sorted(missing)[:5]}")

    # (3) exactness at the reported version: replay the writes up to it and compare with brute force
    present[:] = False
    present[:n0] = True
    xs[:n0] = init
    wi = 0
    for _, _, ver, q, k, _, got in sorted(searches, key=lambda x: x[2]):
        while wi < len(writes) and writes[wi][2] <= ver:
            _, _, _, op, ids, v = writes[wi]
            present[ids] = op == "u"
            if op == "u":
                xs[ids] = v
            wi += 1
        ids = np.flatnonzero(present)
        want_s, want_i = brute_force_topk(xs[ids].astype(np.float32), ids, q, k, "ip")
        if not np.array_equal(want_i, got):
            violations.append(f"result at version {ver} differs from brute force on that version")
    assert violations == [], violations[:10]


# ---------------------------------------------------------------------------------------------- crash safety
CHILD = r"""
import sys, threading
import numpy as np
from recmine.faery.service import RetrievalCore

root, first, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
D = 16
core = RetrievalCore(root, dim=D, storage="fp32", fold_rows=40, fold_tombstones=16, checkpoint_bytes=ckpt)
out = threading.Lock()

def say(line):
    with out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

def vec(i):
    return np.random.default_rng([i, 0]).standard_normal(D).astype(np.float32)

def writer(w):
    acked, j, step = [], 0, 0
    while True:
        ids = [first + 2 * (j + t) + w for t in range(1 + step % 3)]
        j += len(ids)
        txt = ",".join(map(str, ids))
        say("T u " + txt)
        core.upsert(ids, np.stack([vec(i) for i in ids]))
        say("A u " + txt)
        acked += ids
        step += 1
        if step % 4 == 0:
            victim = acked.pop(step % len(acked))
            say(f"T d {victim}")
            core.delete([victim])
            say(f"A d {victim}")

say("READY")
threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def _run_child(root: Path, first: int, ckpt: int, kill_after: float, out: Path) -> list[str]:
    err = out.with_suffix(".err")
    with open(out, "w") as fh, open(err, "w") as eh:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(first), str(ckpt)], stdout=fh,
                                stderr=eh, cwd=REPO)
    deadline = time.monotonic() + 30
    while "READY" not in out.read_text():
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, "child did not start"
        time.sleep(0.02)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return out.read_text().splitlines()


def _parse(lines: list[str]) -> dict[str, set[int]]:
    ev: dict[str, set[int]] = {"T u": set(), "A u": set(), "T d": set(), "A d": set()}
    for line in lines:
        if line[:3] in ev and line.endswith(tuple("0123456789")):  # a line cut by the kill lacks its newline
            ev[line[:3]].update(int(v) for v in line[4:].split(","))
    return ev


def test_sigkill_keeps_every_acknowledged_write(tmp_path):
    root = tmp_path / "idx"
    rng = np.random.default_rng()
    attempted: set[int] = set()
    settled: dict[int, bool] = {}  # id -> present, for ids a finished round settled
    for rnd in range(3):
        lines = _run_child(root, rnd * 1_000_000, 6000, float(rng.uniform(0.3, 1.2)), tmp_path / f"out{rnd}.txt")
        ev = _parse(lines)
        assert len(ev["A u"]) > 5, f"round {rnd}: child acknowledged too little before the kill"
        attempted |= ev["T u"]
        core = RetrievalCore(root, background=False)
        try:
            present = set(core.ids().tolist())
            must = ev["A u"] - ev["T d"]
            assert must <= present, f"lost acknowledged rows {sorted(must - present)[:10]}"
            assert not ev["A d"] & present, f"acknowledged deletes came back {sorted(ev['A d'] & present)[:10]}"
            assert present <= attempted, f"rows never attempted {sorted(present - attempted)[:10]}"
            for i, was in settled.items():
                assert (i in present) == was, f"earlier round's id {i} changed"
            ids = np.array(sorted(present), np.int64)
            np.testing.assert_array_equal(core.get(ids), np.stack([vec_of(i) for i in ids.tolist()]))
            assert len(core) == len(present)
            settled = {i: i in present for i in attempted}
            # a search over the recovered state is exact
            q = rng.standard_normal((3, D)).astype(np.float32)
            got_s, got_i = core.search(q, 10)
            want_s, want_i = brute_force_topk(core.get(ids), ids, q, 10, "ip")
            np.testing.assert_array_equal(got_i, want_i)
        finally:
            core.close(checkpoint=rnd == 1)


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_torn_log_tail_is_dropped(tmp_path, caplog, damage):
    root = tmp_path / "idx"
    lines = _run_child(root, 0, 1 << 40, 0.4, tmp_path / "out.txt")  # no checkpoints: everything is in the log
    log_path = root / "wal.log"
    recs, end, reason = wal_mod.scan(log_path)
    assert reason is None or "torn" in reason
    assert len(recs) >= 3
    offset, last = recs[-1]
    size = end - offset
    with open(log_path, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(offset + size // 2)  # mid-record
        else:
            fh.seek(offset + size - 3)
            b = fh.read(1)
            fh.seek(offset + size - 3)
            fh.write(bytes([b[0] ^ 0x40]))
            fh.truncate(end)
    expect: dict[int, np.ndarray] = {}
    for _, rec in recs[:-1]:
        for j, i in enumerate(rec.ids.tolist()):
            if rec.op == wal_mod.OP_UPSERT:
                expect[i] = rec.vectors[j]
            else:
                del expect[i]
    with caplog.at_level(logging.WARNING, logger="recmine.faery.wal"):
        core = RetrievalCore(root, background=False)
    try:
        assert any("dropping" in r.getMessage() for r in caplog.records), "no warning about the torn tail"
        assert set(core.ids().tolist()) == set(expect)
        ids = np.array(sorted(expect), np.int64)
        np.testing.assert_array_equal(core.get(ids), np.stack([expect[i] for i in ids.tolist()]))
        assert _parse(lines)["A u"]  # the child did acknowledge writes
        assert wal_mod.scan(log_path)[2] is None  # the tail was cut off the file
        new_ids, lsn = core.upsert([10**9], vec_of(10**9)[None])  # the log keeps working after the cut
        assert lsn == last.lsn  # the dropped record's LSN is reused
    finally:
        core.close(checkpoint=False)
    core = RetrievalCore(root, background=False)
    try:
        assert core.contains(10**9) and len(core) == len(expect) + 1
    finally:
        core.close(checkpoint=False)


def test_group_commit_acks_only_after_fsync(tmp_path, monkeypatch):
    """Slow fsyncs: concurrent appenders share them, and nobody returns before a sync covering its record."""
    real_fsync = os.fsync
    synced: list[int] = []
    path = tmp_path / "g.log"

    def slow_fsync(fd: int) -> None:
        if os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino:
            recs, _, _ = wal_mod.scan(path)
            time.sleep(0.01)
            real_fsync(fd)
            synced.append(recs[-1][1].lsn if recs else 0)
        else:
            real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    log, recs = wal_mod.WriteAheadLog.open(path)
    assert recs == []
    bad: list[int] = []

    def writer(w: int) -> None:
        for j in range(15):
            lsn = log.append(wal_mod.OP_UPSERT, np.array([w * 100 + j]), np.ones((1, 4), np.float32) * j)
            log.wait_durable(lsn)
            if not synced or max(synced) < lsn:
                bad.append(lsn)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert bad == []
    assert log.records == 120 and log.syncs < 60, (log.records, log.syncs)
    reopened, got = wal_mod.WriteAheadLog.open(path)
    assert [r.lsn for r in got] == list(range(1, 121))
    assert reopened.next_lsn == 121
    reopened.close()


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_input_gets_exact_status_codes(start_server):
    srv, client = start_server(dim=8, storage="fp32", max_message_mb=1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    client.add(x, np.arange(50))
    q = rng.standard_normal((2, 8)).astype(np.float32)

    def expect(code: grpc.StatusCode, fn, *args, match: str = "") -> None:
        with pytest.raises(Exception) as info:
            fn(*args)
        assert getattr(info.value, "code", None) == code, (code, info.value)
        assert match.lower() in str(info.value).lower(), str(info.value)
        assert client.health() == "SERVING"
        _, ids = client.search(q, 5)  # the server keeps answering correctly
        np.testing.assert_array_equal(ids, brute_force_topk(x, np.arange(50), q, 5, "ip")[1])

    nan = q.copy()
    nan[1, 3] = np.nan
    inv, nf, big = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED
    expect(inv, client.search, np.ones((2, 9), np.float32), 5, match="dim")
    expect(inv, client.search, nan, 5, match="NaN")
    expect(inv, client.search, np.zeros((0, 8), np.float32), 5, match="empty")
    expect(inv, client.search, q, 0, match="k must be")
    expect(inv, client.search, q, -4, match="k must be")
    expect(inv, client.add, np.ones((2, 7), np.float32), [100, 101], match="dim")
    expect(inv, client.add, np.full((1, 8), np.inf, np.float32), [100], match="NaN")
    expect(inv, client.add, np.zeros((0, 8), np.float32), [], match="empty")
    expect(inv, client.add, np.ones((2, 8), np.float32), [100, 100], match="duplicate")
    expect(inv, client.add, np.ones((1, 8), np.float32), [-5], match="non-negative")
    expect(inv, client.add, np.ones((2, 8), np.float32), [100], match="ids for")
    expect(inv, client.remove, [], match="empty")
    expect(nf, client.remove, [12345], match="unknown id 12345")
    expect(nf, client.remove, [3, 777], match="unknown id 777")
    assert srv.core.contains(3)  # nothing was removed by the rejected call
    expect(big, client.search, rng.standard_normal((40_000, 8)).astype(np.float32), 1)  # 1.3 MB request
    expect(big, client.add, rng.standard_normal((40_000, 8)).astype(np.float32))
    expect(big, client.search, q, 100_000, match="message limit")  # the reply would be too large
    pb2, pb2_grpc = stubs()
    stub = pb2_grpc.RetrievalStub(grpc.insecure_channel(srv.address))
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(pb2.SearchRequest(queries=q.tobytes(), nq=3, dim=8, k=5), timeout=5)
    assert info.value.code() == inv and "query bytes" in info.value.details()
    unknown = grpc.insecure_channel(srv.address).unary_unary("/recmine.faery.Retrieval/Train")
    with pytest.raises(grpc.RpcError) as info:
        unknown(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # an unknown method; the server keeps serving
    assert len(srv.core) == 50 and client.stats()["live"] == 50
    with pytest.raises(ConnectionError):
        connect("127.0.0.1:1", timeout=0.5)


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_serve_bounded_lifetime(tmp_path):
    root = tmp_path / "cli_idx"
    proc = subprocess.Popen([sys.executable, "-c", "from recmine.cli import main; main()", "retrieve", "serve",
                             "--index", str(root), "--port", "0", "--dim", "4", "--storage", "fp32",
                             "--for-seconds", "10", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["dim"] == 4 and info["rows"] == 0
        with connect(info["address"], timeout=5) as c:
            assert c.health() == "SERVING"
            ids = c.add(np.eye(4, dtype=np.float32))
            _, got = c.search(np.array([[0, 0, 1, 0]], np.float32), 1)
            assert got[0, 0] == ids[2]
        assert proc.wait(timeout=40) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    core = RetrievalCore(root, background=False)  # stopped cleanly: checkpointed, nothing left to replay
    try:
        assert len(core) == 4 and core.stats()["wal_bytes"] == 0
    finally:
        core.close(checkpoint=False)


# ------------------------------------------------------------------------------------ filters and coalescing
def test_filters_over_the_wire_on_base_and_delta_rows(start_server, tmp_path):
    """allow (id set, bitmap) and where (set, range) through faery.proto: the base index's attributes, upserts
    carrying attributes (and replacing base rows), deletes; exact against the oracle on the allowed live rows,
    before and after a fold and after a restart that replays the log; unknown ids and attributes refused."""
    from recmine.faery import Index

    rng = np.random.default_rng(41)
    x = rng.standard_normal((3000, D)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64) * 3
    cat = rng.integers(0, 8, 3000)
    base = Index(D)
    base.add(x, ids, attrs={"cat": cat})
    base.save(tmp_path / "svc")
    srv, client = start_server("svc", fold_rows=100_000, fold_tombstones=100_000)
    live = dict(zip(ids.tolist(), x, strict=True))
    attrs = {i: {"cat": int(c), "tier": 0} for i, c in zip(ids.tolist(), cat.tolist(), strict=True)}
    v = rng.standard_normal((400, D)).astype(np.float32)
    new = np.arange(400, dtype=np.int64) * 3 + 1
    client.add(v, new, attrs={"cat": np.arange(400) % 8, "tier": np.arange(400) % 3})  # "tier": delta only
    live.update(zip(new.tolist(), v, strict=True))
    attrs.update({int(i): {"cat": int(j % 8), "tier": int(j % 3)} for j, i in enumerate(new.tolist())})
    repl = ids[:50]
    w = rng.standard_normal((50, D)).astype(np.float32)
    client.add(w, repl, attrs={"cat": np.full(50, 7)})  # replaces base rows: cat 7, tier 0
    live.update(zip(repl.tolist(), w, strict=True))
    attrs.update({int(i): {"cat": 7, "tier": 0} for i in repl.tolist()})
    client.remove(ids[50:80])
    for i in ids[50:80].tolist():
        del live[i], attrs[i]
    q = rng.standard_normal((9, D)).astype(np.float32)
    allow = np.array(sorted(live))[::5]
    bitmap = np.zeros(100_000, np.bool_)
    bitmap[np.array(sorted(live))[::2]] = True

    def check(cl) -> None:
        lid = np.array(sorted(live), np.int64)
        lx = np.stack([live[i] for i in lid.tolist()])
        c = np.array([attrs[i]["cat"] for i in lid.tolist()])
        t = np.array([attrs[i]["tier"] for i in lid.tolist()])
        for kw, sel in (({"allow": allow}, np.isin(lid, allow)), ({"allow": bitmap}, bitmap[lid]),
                        ({"where": {"cat": {7}}}, c == 7), ({"where": {"tier": range(1, 3)}}, t >= 1),
                        ({"allow": bitmap, "where": {"cat": [1, 2, 7], "tier": [0]}},
                         bitmap[lid] & np.isin(c, [1, 2, 7]) & (t == 0))):
            want = brute_force_topk(lx[sel], lid[sel], q, 12, "ip")[1]
            np.testing.assert_array_equal(cl.search(q, 12, **kw)[1], want, err_msg=str(kw))
            np.testing.assert_array_equal(cl.search(q[2], 12, **kw)[1][0], want[2], err_msg=str(kw))

    check(client)
    with pytest.raises(KeyError, match=f"allow-list id {int(ids[60])}"):
        client.search(q, 5, allow=[int(ids[100]), int(ids[60])])
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        client.search(q, 5, where={"colour": [1]})
    srv.core.fold()
    check(client)
    client.add(v[:5], [90_001, 90_002, 90_003, 90_004, 90_005], attrs={"cat": [7] * 5})  # in the log only
    live.update(zip([90_001, 90_002, 90_003, 90_004, 90_005], v[:5], strict=True))
    attrs.update({i: {"cat": 7, "tier": 0} for i in (90_001, 90_002, 90_003, 90_004, 90_005)})
    srv.stop(checkpoint=False)
    srv2, client2 = start_server("svc", fold_rows=100_000, fold_tombstones=100_000)  # replays the log
    check(client2)


def test_concurrent_single_queries_are_coalesced_into_batches(tmp_path):
    """Threads sending one query each at the same time are answered by shared batched searches (with different
    k in one batch), every answer exact; a lone client's request is never held back."""
    from recmine.faery.service import RetrievalCore

    rng = np.random.default_rng(43)
    x = rng.standard_normal((30_000, D)).astype(np.float32)
    core = RetrievalCore(tmp_path / "co", dim=D, background=False)
    try:
        core.add(x, np.arange(30_000))
        core.fold()
        q = rng.standard_normal((16 * 12, D)).astype(np.float32)
        ks = [5 + (i % 4) * 10 for i in range(q.shape[0])]
        want = {k: brute_force_topk(x, None, q, k)[1] for k in set(ks)}
        got: dict[int, np.ndarray] = {}
        start = threading.Barrier(16)

        def client(t: int) -> None:
            start.wait()
            for i in range(t, q.shape[0], 16):
                got[i] = core.search(q[i], ks[i])[1][0]

        th = [threading.Thread(target=client, args=(t,)) for t in range(16)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        for i in range(q.shape[0]):
            np.testing.assert_array_equal(got[i], want[ks[i]][i], err_msg=f"request {i}")
        st = core.stats()
        assert st["coalesced_searches"] == q.shape[0] and st["search_batches"] < q.shape[0] // 2, st
        before = st["search_batches"]
        t0 = time.perf_counter()
        core.search(q[0], 5)  # alone: led at once, no window
        assert core.stats()["search_batches"] == before + 1 and time.perf_counter() - t0 < 5
    finally:
        core.close(checkpoint=False)
