"""A parameter-server process: the gRPC/asyncio driver of the protocol core (core.py) over a ParamStore.

The core decides everything about dissemination (mode "ekko"): who leads each shard in each DC, which subscriptions
to keep open and to whom, what each round carries, failover. This module only carries its actions out over gRPC
(open or cancel a Pull; answer a Pull step by step), feeds it the events (messages, ends of calls, time), and serves
Put / Get / Apply with a write-ahead log. Modes "push" and "checkpoint" are the baselines (baselines.py), driven the
same way. Run: python -m recmine.ekko.ps.peer CONFIG.json"""

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

from recmine.auth import Auth
from recmine.ekko.ps.baselines import Pusher, checkpoint_messages
from recmine.ekko.ps.config import PeerConfig
from recmine.ekko.ps.core import (
    Cancel,
    Core,
    End,
    Member,
    Membership,
    PullCall,
    Send,
    Subscribe,
    Timing,
    Wait,
)
from recmine.ekko.ps.scheduler import SloScheduler, Traffic
from recmine.ekko.ps.store import ParamStore, TableUpdate
from recmine.ekko.ps.sync import Sender
from recmine.ekko.ps.wire import (
    decode_values,
    pb_to_request,
    pb_to_rows,
    pb_to_vv,
    request_to_pb,
    rows_to_pb,
    stubs,
    vv_to_pb,
)

MAX_MESSAGE = 64 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


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
    """One PS: the store, its gRPC servicer, and the driver of its protocol core (or of a baseline)."""

    def __init__(self, cfg: PeerConfig, sender: Sender | None = None) -> None:
        self.cfg = cfg
        self.auth = Auth.from_mapping(cfg.auth)
        self.auth.check_listen(cfg.host)
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
        self.traffic: Traffic | None = None
        if sender is None and cfg.scheduler != "all":
            if cfg.link_bytes_per_s <= 0:
                raise ValueError(f"scheduler {cfg.scheduler!r} needs link_bytes_per_s > 0")
            self.traffic = Traffic(cfg.traffic_half_life_s)
            sender = SloScheduler(cfg.scheduler, cfg.link_bytes_per_s, cfg.round_ms / 1000.0,
                                  is_wan=lambda node: self.by_node[node].dc != cfg.dc, traffic=self.traffic)
        members = [Member(cfg.node_id, cfg.dc, cfg.replica), *(Member(p.node_id, p.dc, p.replica) for p in cfg.peers)]
        timing = Timing(cfg.wait_ms, cfg.stream_ms, cfg.pull_interval_ms / 1000.0, cfg.dead_backoff_s,
                        cfg.max_message_bytes)
        self.core = Core(cfg.node_id, Membership(members, cfg.num_dcs, cfg.topology), self.store, sender, timing,
                         incarnation=int.from_bytes(os.urandom(7), "little"))
        origin = cfg.dc == cfg.origin_dc
        self.pusher = (Pusher([p.node_id for p in cfg.peers], max_bytes=cfg.max_message_bytes)
                       if cfg.mode == "push" and origin else None)
        self._push_ready: dict[int, asyncio.Event] = {}
        self._waiters: dict[int, list[tuple[PullCall, asyncio.Future]]] = {}  # shard -> waiting Pull calls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task] = []
        self._calls: dict[int, grpc.aio.UnaryStreamCall | asyncio.Task] = {}
        self.neighbours: dict[int, PeerServer] = {}  # servers of this process (colocated): pulled from in memory
        self._kick = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: grpc.aio.Server | None = None
        self.bound_port = 0

    @property
    def incarnation(self) -> int:
        """This process's incarnation (random per start)."""
        return self.core.incarnation

    # ---- gRPC plumbing
    def channel(self, node: int) -> grpc.aio.Channel:
        """The (cached) channel to peer `node`."""
        addr = self.by_node[node].address
        ch = self._channels.get(addr)
        if ch is None:
            ch = self.auth.aio_channel(addr, GRPC_OPTIONS)
            self._channels[addr] = ch
        return ch

    def _notify(self, changed: dict[int, set[int]], source: int) -> None:
        for s, origins in changed.items():
            waiters = self._waiters.get(s)
            if not waiters:
                continue
            keep = []
            for call, fut in waiters:
                if fut.done():
                    continue
                if call.wants(origins, source):
                    fut.set_result(None)
                else:
                    keep.append((call, fut))
            self._waiters[s] = keep

    def _on_change(self, changed: dict[int, set[int]], source: int) -> None:
        loop = self.loop
        if loop is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._notify(changed, source)
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._notify, changed, source)

    async def start(self) -> int:
        """Start serving and disseminating; returns the bound port."""
        self.loop = asyncio.get_running_loop()
        self.store.listeners.append(self._on_change)
        self.server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=self.auth.aio_server_interceptors())
        self.server.add_generic_rpc_handlers((_handlers(_Servicer(self), self.pb2),))
        self.bound_port = self.auth.add_port(self.server, f"{self.cfg.host}:{self.cfg.port}")
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
            self._tasks.append(asyncio.create_task(self._drive_core()))
        elif self.cfg.mode == "push":
            if self.pusher is not None:
                # a restarted origin does not know which of its acknowledged Puts left before the crash: send its
                # own rows again (last-writer-wins makes the repeats harmless)
                own = [d.take(np.flatnonzero(d.origin == self.cfg.node_id))
                       for d in map(self.store.dump, self.cfg.tables)]
                self.pusher.put(own)
                for p in self.cfg.peers:
                    ready = self._push_ready[p.node_id] = asyncio.Event()
                    ready.set()
                    self._tasks += [asyncio.create_task(self._push_worker(p.node_id, ready))
                                    for _ in range(self.pusher.window)]
        elif self.cfg.mode == "checkpoint":
            if self.cfg.dc == self.cfg.origin_dc and self.cfg.replica == 0:
                self._tasks.append(asyncio.create_task(self._checkpoint_loop()))
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

    # ---- the core's driver
    async def _drive_core(self) -> None:
        """Feed the core the time and carry out its actions; sleep until an event or the core's next wake time."""
        self._execute(self.core.start(time.monotonic()))
        while True:
            now = time.monotonic()
            wake = self.core.wake_at(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), None if wake is None else max(0.0, wake - now))
            self._kick.clear()
            self._execute(self.core.tick(time.monotonic()))

    def _execute(self, actions: list[Subscribe | Cancel]) -> None:
        for act in actions:
            if isinstance(act, Subscribe):
                local = self.neighbours.get(act.node)
                run = self._local_subscription(act, local) if local is not None else self._subscription(act)
                self._tasks.append(asyncio.create_task(run))
            else:
                call = self._calls.pop(act.call, None)
                if call is not None:
                    call.cancel()
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _subscription(self, sub: Subscribe) -> None:
        """One subscription (a Pull call): every message goes to the core, which applies rounds as they end."""
        stub = self.pb2_grpc.ParameterServerStub(self.channel(sub.node))
        req = sub.request
        call = stub.Pull(request_to_pb(self.pb2, req),
                         timeout=(req.stream_ms + req.wait_ms) / 1000.0 + self.cfg.rpc_deadline_s)
        self._calls[sub.call] = call
        failed = False
        try:
            async for batch in call:
                rows = [pb_to_rows(r, self.dims, self.store) for r in batch.rows]  # store: compressed deltas
                self.core.batch(sub.call, rows, batch.last, batch.complete, pb_to_vv(batch.version_vector),
                                batch.counter, batch.round, batch.incarnation)
        except asyncio.CancelledError:
            if not call.cancelled() or asyncio.current_task().cancelling():
                raise  # shutting down
        except Exception as exc:  # noqa: BLE001 - deadline, unreachable, bad rows: the call failed
            failed = not (isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.CANCELLED)
        finally:
            self._calls.pop(sub.call, None)
        self._execute(self.core.ended(sub.call, time.monotonic(), failed))
        self._kick.set()

    async def _local_subscription(self, sub: Subscribe, other: PeerServer) -> None:
        """A subscription to a server in this process: its core answers ours directly, round by round, with no
        encoding and no socket (each server still has its own gRPC endpoint for everyone else)."""
        self._calls[sub.call] = asyncio.current_task()  # a Cancel cancels this task
        failed = False
        try:
            call = other.core.serve(sub.request, time.monotonic())
            while True:
                step = call.next(time.monotonic())
                if isinstance(step, End):
                    break
                if isinstance(step, Wait):
                    await other.wait_change(call, step.until - time.monotonic())
                    continue
                cs, last = step.changes, len(step.messages) - 1
                for i, msg in enumerate(step.messages):
                    self.core.batch(sub.call, msg, i == last, step.round.complete, cs.version_vector, cs.counter,
                                    step.round.id, other.incarnation)
                if step.pause_s:  # as Pull does: the next round or the next change
                    await other.wait_change(call, step.pause_s)
        except asyncio.CancelledError:
            if sub.call in self._calls:  # not our Cancel (it unregisters the call first): shutting down
                raise
        except Exception:  # noqa: BLE001 - a bad request or rows: the call failed, as over gRPC
            failed = True
        finally:
            self._calls.pop(sub.call, None)
        self._execute(self.core.ended(sub.call, time.monotonic(), failed))
        self._kick.set()

    async def wait_change(self, call: PullCall, timeout: float) -> None:
        """Sleep until the call's shard changes in a way it wants (see PullCall.wants) or the timeout passes."""
        fut = self.loop.create_future()
        waiters = self._waiters.setdefault(call.req.shard, [])
        waiters.append((call, fut))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.get(call.req.shard, []).remove((call, fut))

    # ---- baselines
    def on_local_put(self, up: TableUpdate) -> None:
        """Central push: the trainer's PS forwards every update to every other PS."""
        if self.pusher is not None:
            self.pusher.put([up])
            for ready in self._push_ready.values():
                ready.set()

    async def _push_worker(self, dest: int, ready: asyncio.Event) -> None:
        """One of the `window` Applies in flight to `dest`; a failed batch goes back to the pusher's outbox."""
        stub = self.pb2_grpc.ParameterServerStub(self.channel(dest))
        pusher = self.pusher
        while True:
            now = time.monotonic()
            batch = pusher.take(dest, now)
            if batch is None:
                ready.clear()
                wait = pusher.retry_at[dest] - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), wait if wait > 0 else None)
                continue
            req = self.pb2.ApplyRequest(rows=[rows_to_pb(self.pb2, u) for u in batch])
            try:
                await stub.Apply(req, timeout=self.cfg.rpc_deadline_s * 4)
                pusher.acked(dest)
            except grpc.aio.AioRpcError:
                pusher.failed(dest, batch, time.monotonic())  # never dropped: merged with newer rows, sent again
            ready.set()

    async def _checkpoint_loop(self) -> None:
        """Every checkpoint_s ship a full snapshot of every table to every other PS."""
        while True:
            await asyncio.sleep(self.cfg.checkpoint_s)
            msgs = [rows_to_pb(self.pb2, u) for u in checkpoint_messages(self.store, self.cfg.max_message_bytes)]

            async def ship(node: int, msgs: list) -> None:
                stub = self.pb2_grpc.ParameterServerStub(self.channel(node))
                for m in msgs:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.Apply(self.pb2.ApplyRequest(rows=[m]), timeout=self.cfg.checkpoint_s * 3)

            await asyncio.gather(*(ship(p.node_id, msgs) for p in self.cfg.peers))

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
        try:
            call = peer.core.serve(pb_to_request(request), time.monotonic())
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        while True:
            step = call.next(time.monotonic())
            if isinstance(step, End):
                return
            if isinstance(step, Wait):
                await peer.wait_change(call, step.until - time.monotonic())
                continue
            for msg in self._messages(step):
                yield msg
            if step.pause_s:  # the link's budget is spent (or a residual waits): the next round or change
                await peer.wait_change(call, step.pause_s)

    def _messages(self, step: Send) -> list:
        """The round's PullBatch messages; a round that is a whole shared change set is encoded once for every call
        it goes to (kept with the set, as bytes the Pull serializer passes through)."""
        cs = step.changes
        whole = step.round.updates is cs.updates and cs.sources is not None
        key = ("pb", sum(sum(u.nbytes() for u in m) for m in step.messages), len(step.messages))
        if whole and key in cs.memo:
            return cs.memo[key]
        pb2 = self.pb2
        *body, tail = step.messages
        msgs = [pb2.PullBatch(rows=[rows_to_pb(pb2, u) for u in part]) for part in body]
        msgs.append(pb2.PullBatch(rows=[rows_to_pb(pb2, u) for u in tail], last=True, complete=step.round.complete,
                                  counter=cs.counter, version_vector=vv_to_pb(pb2, cs.version_vector),
                                  round=step.round.id, incarnation=self.peer.incarnation))
        if whole:
            msgs = cs.memo[key] = [m.SerializeToString() for m in msgs]
        return msgs

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
                                   applied_ns=at.tolist(), pulls=self.peer.core.pulls,
                                   rows_received=self.peer.core.rows_received)


def _handlers(servicer: _Servicer, pb2) -> grpc.GenericRpcHandler:
    """The ParameterServer methods from the .proto's descriptor; responses already encoded (bytes) pass through."""
    service = pb2.DESCRIPTOR.services_by_name["ParameterServer"]

    def serialize(msg) -> bytes:
        return msg if isinstance(msg, bytes) else msg.SerializeToString()

    handlers = {}
    for m in service.methods:
        kind = grpc.unary_stream_rpc_method_handler if m.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[m.name] = kind(getattr(servicer, m.name), request_deserializer=getattr(pb2, m.input_type.name).FromString,
                                response_serializer=serialize)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def serve(cfgs: list[PeerConfig], ready_files: list[str | None] | None = None, watch_parent: bool = True,
                for_seconds: float | None = None,
                on_ready: Callable[[list[PeerServer]], None] | None = None) -> None:
    """Run one or several PS (several servers of a DC may share a process, each its own gRPC endpoint) until
    SIGTERM/SIGINT, `for_seconds`, or (with watch_parent) the parent's death; then stop cleanly. Each ready file
    gets its server's port once it listens; on_ready(servers) runs then."""
    peers = [PeerServer(c) for c in cfgs]
    for p in peers:
        p.neighbours = {q.cfg.node_id: q for q in peers if q is not p}
    for peer, ready_file in zip(peers, ready_files or [None] * len(peers), strict=True):
        port = await peer.start()
        if ready_file:
            tmp = ready_file + ".tmp"
            Path(tmp).write_text(str(port))
            os.replace(tmp, ready_file)
    if on_ready is not None:
        on_ready(peers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if for_seconds is not None:
        loop.call_later(for_seconds, stop.set)
    parent = os.getppid()

    async def parent_alive() -> None:
        while True:
            await asyncio.sleep(0.5)
            if os.getppid() != parent:
                stop.set()

    watcher = asyncio.create_task(parent_alive()) if watch_parent else None
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    for peer in peers:
        await peer.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point: python -m recmine.ekko.ps.peer CONFIG.json [READY_FILE] [CONFIG.json READY_FILE ...] (several
    configs: several servers in this process)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or (len(args) > 2 and len(args) % 2):
        print("usage: python -m recmine.ekko.ps.peer CONFIG.json [READY_FILE] [CONFIG.json READY_FILE ...]",
              file=sys.stderr)
        raise SystemExit(2)
    pairs = [(args[0], args[1] if len(args) > 1 else None)] if len(args) <= 2 else list(zip(args[::2], args[1::2], strict=True))
    cfgs = [PeerConfig.from_json(c) for c, _ in pairs]
    asyncio.run(serve(cfgs, [r for _, r in pairs], watch_parent=not os.environ.get("RECMINE_EKKO_DETACHED")))


if __name__ == "__main__":
    main()
