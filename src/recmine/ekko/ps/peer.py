"""A parameter-server process: gRPC service over a ParamStore plus peer-to-peer update dissemination.

Dissemination (mode "ekko"): for each shard, one replica per data centre is the leader (a deterministic rotation
from the topology: replica (shard + i) mod R, the first one alive). Leaders long-poll the leaders of the other DCs
(all of them in a mesh, the neighbours in a spanning tree) and the other replicas of their own DC; followers long-poll
their DC's leader. So each changed byte crosses each WAN link about once, and nothing central decides anything.
A Pull answers "what changed since my version vector" and, when nothing has, waits up to wait_ms for a change.
Modes "push" and "checkpoint" are the baselines (see baselines.py). Run: python -m recmine.ekko.ps.peer CONFIG.json"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from recmine.ekko.ps import baselines
from recmine.ekko.ps.config import PeerConfig
from recmine.ekko.ps.scheduler import SloScheduler, Traffic
from recmine.ekko.ps.store import ChangeSet, ParamStore, TableUpdate
from recmine.ekko.ps.sync import Asker, Incarnations, Responder, Round, Sender, SendEverything, Superseded
from recmine.ekko.ps.wire import decode_values, pb_to_rows, pb_to_vv, rows_to_pb, stubs, vv_to_pb

MAX_MESSAGE = 64 * 1024 * 1024


class _WriteAheadLog:
    """Acknowledged Puts survive a crash: length + CRC32 framed records, fsync before the ack."""

    HEADER = struct.Struct("<II")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = open(path, "ab")  # noqa: SIM115 - kept open for the process lifetime

    def append(self, payload: bytes) -> None:
        self.fh.write(self.HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    @classmethod
    def replay(cls, path: str) -> list[bytes]:
        """Intact records in order; a torn tail (short or CRC mismatch) is cut off the file."""
        if not os.path.exists(path):
            return []
        data = Path(path).read_bytes()
        out, pos = [], 0
        while pos + cls.HEADER.size <= len(data):
            n, crc = cls.HEADER.unpack_from(data, pos)
            body = data[pos + cls.HEADER.size: pos + cls.HEADER.size + n]
            if len(body) < n or zlib.crc32(body) != crc:
                break
            out.append(body)
            pos += cls.HEADER.size + n
        if pos < len(data):
            with open(path, "r+b") as fh:
                fh.truncate(pos)
        return out


class PeerServer:
    """One PS: the store, its gRPC servicer, and the dissemination tasks."""

    def __init__(self, cfg: PeerConfig, sender: Sender | None = None) -> None:
        self.cfg = cfg
        self.pb2, self.pb2_grpc = stubs()
        if cfg.snapshot_path and os.path.exists(cfg.snapshot_path):
            self.store = ParamStore.load(cfg.snapshot_path, node_id=cfg.node_id)
        else:
            self.store = ParamStore(cfg.tables, cfg.num_shards, node_id=cfg.node_id)
        self.store.log_applies = cfg.log_applies
        self.wal: _WriteAheadLog | None = None
        if cfg.wal_path:
            for rec in _WriteAheadLog.replay(cfg.wal_path):
                req = self.pb2.PutRequest.FromString(rec)
                vals = decode_values(req.table, list(req.keys), req.values, req.dim, self.store.dim(req.table))
                self.store.apply_own(req.table, np.array(req.keys, np.int64), vals, req.ts)
            self.wal = _WriteAheadLog(cfg.wal_path)
        self.put_lock = asyncio.Lock()  # stamp -> log -> apply in order, so version vectors stay truthful
        self.dims = {t: d for t, d in cfg.tables.items()}
        self.by_node = {p.node_id: p for p in cfg.peers}
        self.incarnation = int.from_bytes(os.urandom(7), "little")
        self.peer_incarnations = Incarnations(self.store)  # a restarted peer is sent again what it delivered here
        self.traffic: Traffic | None = None
        if sender is None and cfg.scheduler != "all":
            if cfg.link_bytes_per_s <= 0:
                raise ValueError(f"scheduler {cfg.scheduler!r} needs link_bytes_per_s > 0")
            self.traffic = Traffic(cfg.traffic_half_life_s)
            sender = SloScheduler(cfg.scheduler, cfg.link_bytes_per_s, cfg.round_ms / 1000.0,
                                  is_wan=lambda node: self.by_node[node].dc != cfg.dc, traffic=self.traffic)
        self.sender: Sender = sender or SendEverything()
        self.dead_until: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task] = []
        self._outboxes: dict[int, tuple[baselines.Outbox, asyncio.Event]] = {}
        self.push_retries = 0
        self.pulls = 0
        self.rows_received = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: grpc.aio.Server | None = None
        self.bound_port = 0

    # ---- topology
    def dc_replicas(self, dc: int) -> list[int]:
        """Node ids of a DC's replicas by replica index (this node included when dc is ours)."""
        ids = {p.replica: p.node_id for p in self.cfg.peers if p.dc == dc}
        if dc == self.cfg.dc:
            ids[self.cfg.replica] = self.cfg.node_id
        return [ids[r] for r in sorted(ids)]

    def alive(self, node: int) -> bool:
        """This node's view: a peer is presumed alive unless it failed recently."""
        return node == self.cfg.node_id or self.dead_until.get(node, 0.0) <= time.monotonic()

    def leader_of(self, dc: int, shard: int) -> int:
        """The shard's leader in a DC: replica (shard + i) mod R for the first i whose replica is alive."""
        reps = self.dc_replicas(dc)
        r = len(reps)
        for i in range(r):
            node = reps[(shard + i) % r]
            if self.alive(node):
                return node
        return reps[shard % r]

    def wan_neighbours(self) -> list[int]:
        """DCs this DC's leaders pull from: all others (mesh) or tree neighbours (binary tree on DC ids)."""
        me, n = self.cfg.dc, self.cfg.num_dcs
        if self.cfg.topology == "mesh":
            return [d for d in range(n) if d != me]
        nb = [(me - 1) // 2] if me > 0 else []
        nb += [c for c in (2 * me + 1, 2 * me + 2) if c < n]
        return nb

    # ---- gRPC plumbing
    def channel(self, node: int) -> grpc.aio.Channel:
        addr = self.by_node[node].address
        ch = self._channels.get(addr)
        if ch is None:
            ch = grpc.aio.insecure_channel(addr, options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                                          ("grpc.max_send_message_length", MAX_MESSAGE)])
            self._channels[addr] = ch
        return ch

    def _notify(self, shards: set[int]) -> None:
        for s in shards:
            ev = self._events.pop(s, None)
            if ev is not None:
                ev.set()

    def _on_change(self, shards: set[int]) -> None:
        loop = self.loop
        if loop is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._notify(shards)
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._notify, shards)

    async def start(self) -> int:
        """Start serving and disseminating; returns the bound port."""
        self.loop = asyncio.get_running_loop()
        self.store.listeners.append(self._on_change)
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                               ("grpc.max_send_message_length", MAX_MESSAGE)])
        self.pb2_grpc.add_ParameterServerServicer_to_server(_Servicer(self), self.server)
        self.bound_port = self.server.add_insecure_port(f"{self.cfg.host}:{self.cfg.port}")
        if self.bound_port == 0:
            raise OSError(f"cannot listen on {self.cfg.host}:{self.cfg.port}")
        await self.server.start()
        self._tasks.append(asyncio.create_task(self._start_dissemination()))
        return self.bound_port

    async def _start_dissemination(self) -> None:
        """Wait for the launcher's go signal (so no peer is presumed dead just for starting later), then run the
        mode's loops."""
        while self.cfg.go_file and not os.path.exists(self.cfg.go_file):
            await asyncio.sleep(0.02)
        if self.cfg.mode == "ekko":
            for s in range(self.cfg.num_shards):
                for node in self.dc_replicas(self.cfg.dc):
                    if node != self.cfg.node_id:
                        self._tasks.append(asyncio.create_task(self._intra_loop(s, node)))
                for dc in self.wan_neighbours():
                    self._tasks.append(asyncio.create_task(self._cross_loop(s, dc)))
        elif self.cfg.mode == "push":
            # a restarted origin does not know which of its acknowledged Puts left before the crash: send its own
            # rows again (last-writer-wins makes the repeats harmless)
            own = [d.take(np.flatnonzero(d.origin == self.cfg.node_id)) for d in map(self.store.dump, self.cfg.tables)]
            for p in self.cfg.peers:
                box = self._outboxes[p.node_id] = (baselines.Outbox(), asyncio.Event())
                if self.cfg.dc == self.cfg.origin_dc:
                    box[0].add(own)
                    box[1].set()
                self._tasks.append(asyncio.create_task(baselines.push_loop(self, p.node_id, *box)))
        elif self.cfg.mode == "checkpoint":
            if self.cfg.dc == self.cfg.origin_dc and self.cfg.replica == 0:
                self._tasks.append(asyncio.create_task(baselines.checkpoint_loop(self)))
        else:
            raise ValueError(f"unknown mode {self.cfg.mode!r}")
        if self.cfg.snapshot_path and self.cfg.snapshot_every_s > 0:
            self._tasks.append(asyncio.create_task(self._snapshot_loop()))

    async def stop(self) -> None:
        """Cancel dissemination, save a snapshot if configured, stop serving."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.cfg.snapshot_path:
            self.store.save(self.cfg.snapshot_path)
        for ch in self._channels.values():
            await ch.close()
        if self.server is not None:
            await self.server.stop(0.5)

    # ---- dissemination
    async def _intra_loop(self, shard: int, node: int) -> None:
        """Within the DC: the leader pulls from every other replica; a follower pulls from its leader."""
        await self._pull_loop(shard, lambda: node if self._intra_active(shard, node) else None, None)

    def _intra_active(self, shard: int, node: int) -> bool:
        leader = self.leader_of(self.cfg.dc, shard)
        return self.alive(node) and (leader == self.cfg.node_id or leader == node)

    async def _cross_loop(self, shard: int, dc: int) -> None:
        """Across the WAN: while this node leads the shard in its DC, pull from that DC's leader."""
        def source() -> int | None:
            if self.leader_of(self.cfg.dc, shard) != self.cfg.node_id:
                return None
            return self.leader_of(dc, shard)
        # mesh: from each DC only the rows born there (every DC hears every other directly: once per link);
        # tree: everything, relayed hop by hop
        origins = self.dc_replicas(dc) if self.cfg.topology == "mesh" else None
        await self._pull_loop(shard, source, origins)

    async def _pull_loop(self, shard: int, source: Callable[[], int | None], origins: list[int] | None) -> None:
        askers: dict[int, Asker] = {}
        while True:
            node = source()
            if node is None:
                await asyncio.sleep(0.05)
                continue
            asker = askers.get(node)
            if asker is None:
                asker = askers[node] = Asker(self.store, shard, node, self.peer_incarnations)
            t0 = time.monotonic()
            try:
                await self._pull_once(asker, origins, source)
            except (TimeoutError, grpc.aio.AioRpcError, ValueError) as exc:
                asker.failed()
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.CANCELLED:
                    continue  # we ended it: leadership or the source moved
                # presumed dead for a while that doubles with each consecutive failure (a peer that is merely
                # starting up costs ~0.1 s, a crashed one is skipped for up to dead_backoff_s)
                fails = self._failures[node] = self._failures.get(node, 0) + 1
                self.dead_until[node] = time.monotonic() + min(self.cfg.dead_backoff_s, 0.05 * 2 ** fails)
                await asyncio.sleep(0.05)
                continue
            self._failures.pop(node, None)
            gap = self.cfg.pull_interval_ms / 1000.0 - (time.monotonic() - t0)
            if gap > 0:
                await asyncio.sleep(gap)

    async def _pull_once(self, asker: Asker, origins: list[int] | None = None,
                         source: Callable[[], int | None] | None = None) -> None:
        """One subscription to `asker.source` for its shard: rounds of changes are applied as they arrive, and the
        rounds applied are acknowledged by the next subscription."""
        pb2 = self.pb2
        node = asker.source
        stub = self.pb2_grpc.ParameterServerStub(self.channel(node))
        vv, since, since_inc, applied = asker.request()
        req = pb2.PullRequest(shard=asker.shard, version_vector=vv_to_pb(pb2, vv), has_since=since is not None,
                              since_counter=since or 0, since_incarnation=since_inc, wait_ms=self.cfg.wait_ms,
                              requester=self.cfg.node_id, max_message_bytes=self.cfg.max_message_bytes,
                              stream_ms=self.cfg.stream_ms, origins=origins or [], incarnation=self.incarnation,
                              applied_rounds=applied)
        timeout = (self.cfg.stream_ms + self.cfg.wait_ms) / 1000.0 + self.cfg.rpc_deadline_s
        call = stub.Pull(req, timeout=timeout)

        async def watch() -> None:  # end the subscription as soon as this node should pull elsewhere
            while True:
                await asyncio.sleep(0.1)
                if source is not None and source() != node:
                    call.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            async for batch in call:
                rows = [pb_to_rows(r, self.dims, self.store) for r in batch.rows]  # store: compressed deltas
                self.rows_received += sum(len(u) for u in rows)
                if asker.batch(rows, batch.last, batch.complete, pb_to_vv(batch.version_vector), batch.counter,
                               batch.round, batch.incarnation) is not None:
                    self.pulls += 1
        except asyncio.CancelledError:
            if not call.cancelled() or asyncio.current_task().cancelling():
                raise
            asker.failed()  # we ended it (the source moved): a round cut here is offered again next time
        finally:
            watcher.cancel()

    async def wait_change(self, shard: int, timeout: float) -> None:
        """Sleep until the shard changes or the timeout passes."""
        ev = self._events.get(shard)
        if ev is None:
            ev = self._events[shard] = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)

    # ---- baselines
    def on_local_put(self, up: TableUpdate) -> None:
        """Central push: the trainer's PS forwards every update to every other PS."""
        if self.cfg.mode == "push" and self.cfg.dc == self.cfg.origin_dc:
            for outbox, ready in self._outboxes.values():
                outbox.add([up])
                ready.set()

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.snapshot_every_s)
            await asyncio.to_thread(self.store.save, self.cfg.snapshot_path)


class _Servicer:
    """gRPC methods; every bad request gets INVALID_ARGUMENT / NOT_FOUND with a message and changes nothing."""

    def __init__(self, peer: PeerServer) -> None:
        self.peer = peer
        self.pb2 = peer.pb2

    async def Put(self, request, context):  # noqa: N802 - gRPC method name
        store = self.peer.store
        if request.table not in store.tables:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown table {request.table!r}; tables are {sorted(store.tables)}")
        try:
            keys = np.array(request.keys, np.int64)
            values = decode_values(request.table, list(request.keys), request.values, request.dim,
                                   store.dim(request.table))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.peer.wal is not None:
            async with self.peer.put_lock:
                ts = store.next_ts() if request.ts == 0 else max(request.ts, store.next_ts())
                rec = self.pb2.PutRequest(table=request.table, keys=request.keys, values=request.values,
                                          dim=request.dim, ts=ts)
                await asyncio.to_thread(self.peer.wal.append, rec.SerializeToString())
                store.apply_own(request.table, keys, values, ts)
        else:
            ts = store.put(request.table, keys, values, ts=request.ts or None)
        if self.peer.cfg.mode == "push":
            up = TableUpdate(request.table, keys, values, np.full(keys.shape[0], ts, np.int64),
                             np.full(keys.shape[0], store.node_id, np.int32))
            self.peer.on_local_put(up)
        return self.pb2.PutReply(ts=ts, applied=int(keys.shape[0]))

    async def Apply(self, request, context):  # noqa: N802
        try:
            ups = [pb_to_rows(r, self.peer.dims) for r in request.rows]
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        n = self.peer.store.apply(ups)
        return self.pb2.PutReply(ts=0, applied=n)

    async def Get(self, request, context):  # noqa: N802
        store = self.peer.store
        if request.table not in store.tables:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown table {request.table!r}; tables are {sorted(store.tables)}")
        keys = np.array(request.keys, np.int64)
        vals, found, ts = store.get(request.table, keys)
        if self.peer.traffic is not None:
            self.peer.traffic.observe(request.table, keys)
        return self.pb2.GetReply(values=vals.astype("<f4").tobytes(), dim=vals.shape[1], found=found.tolist(),
                                 ts=ts.tolist())

    async def ShardVersions(self, request, context):  # noqa: N802
        return self.pb2.ShardVersionsReply(counters=self.peer.store.counters().tolist(),
                                           node_id=self.peer.cfg.node_id)

    async def Pull(self, request, context):  # noqa: N802
        peer = self.peer
        store = peer.store
        if not 0 <= request.shard < store.num_shards:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"shard {request.shard} out of range [0, {store.num_shards})")
        budget = request.max_message_bytes or peer.cfg.max_message_bytes
        call = Responder(store, peer.sender, request.shard, pb_to_vv(request.version_vector),
                         request.since_counter if request.has_since else None, request.requester,
                         request.incarnation, request.origins, request.applied_rounds, budget,
                         request.since_incarnation, peer.incarnation, peer.peer_incarnations)
        end = time.monotonic() + max(0, request.stream_ms) / 1000.0
        first = True
        while True:
            cs = call.changes()
            deadline = time.monotonic() + max(0, request.wait_ms) / 1000.0
            while len(cs) == 0 and time.monotonic() < max(deadline, end):
                await peer.wait_change(request.shard, max(deadline, end) - time.monotonic())
                cs = call.changes()
            if len(cs) == 0 and not first:
                return
            try:
                rnd = call.pick(cs)
            except Superseded:
                return
            for msg in self._batches(rnd, budget, cs):
                yield msg
            first = False
            if not rnd.complete:  # the link's budget is spent (or a residual waits): the next round or change
                await peer.wait_change(request.shard, peer.sender.round_s)
            if time.monotonic() >= end:
                return

    def _batches(self, rnd: Round, budget: int, cs: ChangeSet):
        msgs, size = [], 0
        for up in rnd.updates:
            per = max(1, budget // (up.values.shape[1] * 4 + 20))
            for lo in range(0, len(up), per):
                part = up.take(np.arange(lo, min(lo + per, len(up))))
                if size + part.nbytes() > budget and msgs:
                    yield self.pb2.PullBatch(rows=msgs)
                    msgs, size = [], 0
                msgs.append(rows_to_pb(self.pb2, part))
                size += part.nbytes()
        yield self.pb2.PullBatch(rows=msgs, last=True, complete=rnd.complete, counter=cs.counter,
                                 version_vector=vv_to_pb(self.pb2, cs.version_vector), round=rnd.id,
                                 incarnation=self.peer.incarnation)

    async def Health(self, request, context):  # noqa: N802
        return self.pb2.HealthReply(status="SERVING", node_id=self.peer.cfg.node_id, keys=len(self.peer.store),
                                    mode=self.peer.cfg.mode)

    async def Stats(self, request, context):  # noqa: N802
        log = self.peer.store.apply_log
        tables = [x[0] for x in log]
        if log:
            keys = np.concatenate([x[1] for x in log])
            ts = np.concatenate([x[2] for x in log])
            origin = np.concatenate([x[3] for x in log])
            at = np.concatenate([x[4] for x in log])
        else:
            keys = ts = at = np.zeros(0, np.int64)
            origin = np.zeros(0, np.int32)
        if request.clear:
            self.peer.store.apply_log = []
        names = sorted(set(tables))
        table = np.repeat([names.index(t) for t in tables], [x[1].size for x in log]) if log else []
        return self.pb2.StatsReply(keys=keys.tolist(), ts=ts.tolist(), origin=origin.tolist(),
                                   table_names=names, table=list(map(int, table)),
                                   applied_ns=at.tolist(), pulls=self.peer.pulls,
                                   rows_received=self.peer.rows_received)


async def serve(cfg: PeerConfig, ready_file: str | None = None) -> None:
    """Run a PS until SIGTERM/SIGINT (or the parent dies), then stop cleanly."""
    peer = PeerServer(cfg)
    port = await peer.start()
    if ready_file:
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(str(port))
        os.replace(tmp, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def watch_parent() -> None:
        while True:
            await asyncio.sleep(0.5)
            if os.getppid() != parent:
                stop.set()

    watcher = None if os.environ.get("RECMINE_EKKO_DETACHED") else asyncio.create_task(watch_parent())
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    await peer.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point: python -m recmine.ekko.ps.peer CONFIG.json [READY_FILE]."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m recmine.ekko.ps.peer CONFIG.json [READY_FILE]", file=sys.stderr)
        raise SystemExit(2)
    cfg = PeerConfig.from_json(args[0])
    asyncio.run(serve(cfg, args[1] if len(args) > 1 else None))


if __name__ == "__main__":
    main()
