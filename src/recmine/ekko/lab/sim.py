"""A discrete-event simulator (SimPy) that drives the real protocol core over a modelled network, to thousands of
parameter servers.

Every server is a real `ps.core.Core` over a real `ParamStore` (holding one float per row: the wire is charged
for the modelled `dim`), and the simulator is its driver, as `peer.py` is over gRPC: it carries out each Subscribe
and Cancel, runs each Pull step by step (`PullCall.next`), delivers the messages and feeds the ends of calls back.
Central push (`baselines.Pusher`) and checkpoints (`baselines.checkpoint_messages`) run in the same simulator.

The model: every server has a WAN NIC (a token bucket: a message leaves when everything queued before it has) and a
LAN NIC for its own DC; each DC pair a one-way delay with optional Gaussian jitter and per-packet loss (a lost
packet delays its message by TCP's retransmission timeout; a connection delivers in order); every server a CPU that
runs one job at a time, charged per message and per row what the real server process spends (`measure_cpu` reads
it from real PS processes) and, when `host_cores` is set, all servers share that many cores, as the processes of a
local emulation do (the WAN emulator's own CPU is then charged too). Latency is measured as in `bench.py`: from the
Put's stamp until that version (or a newer one) is applied at the last server."""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
import platform
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from recmine.ekko.lab.bench import (
    ENTRY_OVERHEAD,
    BenchSpec,
    machine_cpu,
    percentile,
    physical_floor,
    proc_cpu,
    update_stream,
    write_targets,
)
from recmine.ekko.lab.wan import Nic
from recmine.ekko.ps.baselines import Pusher
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
from recmine.ekko.ps.scheduler import SloScheduler
from recmine.ekko.ps.store import ParamStore, TableUpdate
from recmine.extras import require

simpy = require("simpy", "ekko")

MSG_OVERHEAD = 60  # bytes of gRPC/HTTP2 framing and message fields per message beside its rows
TCP_MSS = 1448
MIN_RTO_S = 0.2  # Linux's minimum retransmission timeout


@dataclass
class CpuCost:
    """CPU seconds a real PS process spends, per message and per row, on each kind of work (see measure_cpu)."""

    put_msg: float = 150e-6  # a Put: decode, stamp, apply
    put_row: float = 1.0e-6
    send_msg: float = 250e-6  # one message of a Pull round: find the changes, pick, encode, send
    send_row: float = 1.0e-6
    shared_msg: float = 80e-6  # the same round sent again to another call that asked the same (SharedChanges)
    shared_row: float = 0.0
    recv_msg: float = 200e-6  # one message received: decode, apply
    recv_row: float = 1.5e-6
    proxy_msg: float = 60e-6  # the WAN emulator, per message it relays and per byte
    proxy_byte: float = 2e-9
    idle: float = 0.005  # share of a core a server process uses while nothing happens
    dim: int = 64
    source: str = "defaults"

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


@dataclass
class SimSpec(BenchSpec):
    """A simulated run: the benchmark's workload (BenchSpec) plus the network and CPU model."""

    jitter_ms: float = 0.0  # standard deviation of the one-way delay (Gaussian, cut at 0)
    loss: float = 0.0  # per-packet loss on WAN links (a lost packet costs its message one RTO)
    lan_gbps: float = 10.0  # LAN egress per server (within a DC)
    lan_delay_ms: float = 0.05
    host_cores: float = 0.0  # 0: each server has its own core; h > 0: all share h cores (a local emulation)
    proxy: bool = False  # charge the WAN emulator's CPU (with host_cores, as in a local emulation)
    drain_s: float = 3.0  # simulated time after the stream for stragglers
    max_message_bytes: int = 4 * 1024 * 1024
    wait_ms: int = 1000
    stream_ms: int = 10000
    scheduler: str = "all"  # all | slo | fifo (+fp16 / +int8 runs the codec; the wire is charged float32 rows)
    scheduler_share: float = 0.9
    round_ms: float = 50.0


@numba.njit(cache=True, nogil=True)
def _seen_kernel(node: int, kid: np.ndarray, ts: np.ndarray, now: float, ptr: np.ndarray, key_start: np.ndarray,
                 rows_of_key: np.ndarray, stamps: np.ndarray, count: np.ndarray, worst: np.ndarray,
                 n_nodes: int) -> None:
    """Node `node` applied versions `ts` of keys `kid`: every put row of those keys with a stamp <= the version is
    now visible there; a row visible at all n_nodes servers gets its time in `worst`."""
    for i in range(kid.shape[0]):
        k = kid[i]
        p = ptr[node, k]
        end = key_start[k + 1]
        while p < end:
            r = rows_of_key[p]
            if stamps[r] > ts[i]:
                break
            count[r] += 1
            if count[r] == n_nodes:
                worst[r] = now
            p += 1
        ptr[node, k] = p


class Visibility:
    """Streaming form of `bench.visibility` over all servers at once: per put row, the time its version (or a newer
    one of the key) had been applied at every server. Put rows are known in advance (the update stream); their
    stamps are filled in as the Puts happen, in order."""

    def __init__(self, put_keys: np.ndarray, n_nodes: int) -> None:
        self.keys = np.unique(put_keys)
        kid = np.searchsorted(self.keys, put_keys)
        order = np.argsort(kid, kind="stable")  # per key, its put rows in stream order (= stamp order)
        self.rows_of_key = order.astype(np.int64)
        self.key_start = np.zeros(self.keys.size + 1, np.int64)
        np.cumsum(np.bincount(kid, minlength=self.keys.size), out=self.key_start[1:])
        self.stamps = np.full(put_keys.size, np.iinfo(np.int64).max, np.int64)
        self.count = np.zeros(put_keys.size, np.int32)
        self.worst = np.full(put_keys.size, np.inf)
        self.ptr = np.zeros((n_nodes, self.keys.size), np.int64)
        self.ptr[:] = self.key_start[:-1]
        self.n_nodes = n_nodes

    def stamp(self, rows: np.ndarray, ts: np.ndarray) -> None:
        """Put rows `rows` were stamped `ts` (ns)."""
        self.stamps[rows] = ts

    def seen(self, node: int, keys: np.ndarray, ts: np.ndarray, now: float) -> None:
        """Server `node` applied versions `ts` of `keys` at time `now` (s)."""
        kid = np.searchsorted(self.keys, keys)
        ok = (kid < self.keys.size) & (self.keys[np.minimum(kid, self.keys.size - 1)] == keys)
        _seen_kernel(node, kid[ok], np.asarray(ts, np.int64)[ok], now, self.ptr, self.key_start, self.rows_of_key,
                     self.stamps, self.count, self.worst, self.n_nodes)

    def latencies(self) -> np.ndarray:
        """Seconds from each put row's stamp until visible everywhere (+inf if never or never stamped)."""
        lat = self.worst - self.stamps / 1e9
        lat[self.stamps == np.iinfo(np.int64).max] = np.inf
        return lat


@dataclass
class _Node:
    id: int
    dc: int
    replica: int
    store: ParamStore
    core: Core
    nic_wan: Nic
    nic_lan: Nic
    cpu_free: float = 0.0
    cpu_busy: float = 0.0
    busy_warm: tuple[float, float] = (0.0, 0.0)  # (NIC, CPU) busy seconds when the measured stream began
    pending: deque = field(default_factory=deque)  # Pull steps waiting for the CPU, in arrival order
    draining: bool = False
    waiting: dict[int, list] = field(default_factory=dict)
    tick_at: float = math.inf
    pusher: Pusher | None = None


class Simulation:
    """One simulated run of one mode (ekko, push or checkpoint) of a SimSpec."""

    def __init__(self, spec: SimSpec, mode: str = "ekko", cpu: CpuCost | None = None) -> None:
        if mode not in ("ekko", "push", "checkpoint"):
            raise ValueError(f"mode must be ekko, push or checkpoint, got {mode!r}")
        if spec.dcs < 1 or spec.replicas < 1 or spec.shards < 1:
            raise ValueError("dcs, replicas (servers per DC) and shards must be >= 1")
        self.spec, self.mode = spec, mode
        self.cpu = cpu or CpuCost(dim=spec.dim)
        self.env = simpy.Environment(initial_time=1.0)
        self.rng = np.random.default_rng(spec.seed + 7)
        self.entry = spec.dim * 4 + ENTRY_OVERHEAD
        n = spec.dcs * spec.replicas
        members = [Member(i, i // spec.replicas, i % spec.replicas) for i in range(n)]
        membership = Membership(members, spec.dcs, spec.topology)
        timing = Timing(spec.wait_ms, spec.stream_ms, 0.0, 1.5, spec.max_message_bytes)
        self.nodes: list[_Node] = []
        for m in members:
            store = ParamStore({"emb": 1}, spec.shards, node_id=m.node_id, cache_size=4096)
            sender = None
            if spec.scheduler != "all":
                sender = SloScheduler(spec.scheduler, spec.nic_mbps * 1e6 / 8 * spec.scheduler_share,
                                      spec.round_ms / 1000.0, is_wan=lambda peer, dc=m.dc: peer // spec.replicas != dc,
                                      clock=lambda: self.env.now)
            node = _Node(m.node_id, m.dc, m.replica, store, Core(m.node_id, membership, store, sender, timing,
                                                                   incarnation=m.node_id + 1),
                         Nic(spec.nic_mbps * 1e6), Nic(spec.lan_gbps * 1e9))
            store.listeners.append(lambda changed, source, node=node: self._changed(node, changed, source))
            self.nodes.append(node)
        self.one_way = np.full((spec.dcs, spec.dcs), spec.rtt_ms / 2000.0)
        self.conn_last: dict[tuple[int, int], float] = {}
        self.cancelled: set[tuple[int, int]] = set()
        self.partial: dict[tuple[int, int], list[TableUpdate]] = {}
        self.wan_bytes = 0
        self.host: list[float] = [0.0] * math.ceil(spec.host_cores) if spec.host_cores > 0 else []
        self.proxy_free = 0.0
        self.messages = 0
        idle = self.cpu.idle * (n + (1 if spec.proxy else 0))
        # a fractional or partly idle-busy host: every job takes longer by the share of capacity missing
        self.stretch = len(self.host) / max(0.2, spec.host_cores - idle) if spec.host_cores > 0 else 1.0
        duration = spec.duration_s if mode != "checkpoint" else max(spec.duration_s, spec.checkpoint_s * 1.2)
        self.batches = update_stream(spec, duration)
        self.warm = spec.warm_batches
        self.put_keys = np.concatenate(self.batches[self.warm:])
        self.vis = Visibility(self.put_keys, n)
        # the stream starts once subscriptions are open everywhere (the real benchmark waits for that too), and its
        # first `warm` batches are not measured (as in the real benchmark)
        self.t0 = 1.0 + max(0.2, 6 * float(self.one_way.max()))
        self.t_measured = self.t0 + self.warm * spec.batch_every_s
        self.stream_end = self.t0 + len(self.batches) * spec.batch_every_s
        self.wan_bytes_warm = 0

    # ---- the machinery: time, CPU, network
    def _at(self, t: float, fn: Callable, *args: Any) -> None:
        ev = self.env.timeout(max(0.0, t - self.env.now))
        ev.callbacks.append(lambda _e: fn(*args))

    def _cpu(self, node: _Node, cost: float) -> float:
        """Reserve `cost` CPU seconds on `node` (and a host core when shared); returns when the job is done."""
        cost *= self.stretch
        start = max(self.env.now, node.cpu_free)
        if self.host:
            core = heapq.heappop(self.host)
            start = max(start, core)
            heapq.heappush(self.host, start + cost)
        node.cpu_free = start + cost
        node.cpu_busy += cost
        return node.cpu_free

    def _send(self, src: _Node, dst: _Node, nbytes: int, at: float, fn: Callable, *args: Any) -> None:
        """A message of `nbytes` leaves `src` (its CPU done at `at`) for `dst`; `fn(*args)` runs on arrival."""
        self.messages += 1
        if src.dc != dst.dc:
            if self.spec.proxy:  # the emulator relays it: one more single-threaded process on the host's cores
                cost = (self.cpu.proxy_msg + self.cpu.proxy_byte * nbytes) * self.stretch
                start = max(at, self.proxy_free)
                if self.host:
                    core = heapq.heappop(self.host)
                    start = max(start, core)
                    heapq.heappush(self.host, start + cost)
                at = self.proxy_free = start + cost
            done = src.nic_wan.reserve(nbytes, at)
            delay = self.one_way[src.dc, dst.dc]
            if self.spec.jitter_ms > 0:
                delay = max(0.0, delay + self.rng.normal(0.0, self.spec.jitter_ms / 1000.0))
            if self.spec.loss > 0:
                packets = max(1, -(-nbytes // TCP_MSS))
                if self.rng.random() < 1.0 - (1.0 - self.spec.loss) ** packets:
                    delay += max(MIN_RTO_S, 2 * self.one_way[src.dc, dst.dc])
            self.wan_bytes += nbytes
        else:
            done = src.nic_lan.reserve(nbytes, at)
            delay = self.spec.lan_delay_ms / 1000.0
        arrive = max(done + delay, self.conn_last.get((src.id, dst.id), 0.0))
        self.conn_last[(src.id, dst.id)] = arrive
        self._at(arrive, fn, *args)

    def _rows_bytes(self, updates: list[TableUpdate]) -> tuple[int, int]:
        rows = sum(len(u) for u in updates)
        return rows, rows * self.entry + MSG_OVERHEAD

    # ---- ekko: the core's driver
    def _execute(self, node: _Node, actions: list[Subscribe | Cancel]) -> None:
        for act in actions:
            if isinstance(act, Subscribe):
                req = act.request
                nbytes = MSG_OVERHEAD + 12 * len(req.version_vector) + 8 * len(req.applied) + 4 * len(req.origins or ())
                done = self._cpu(node, self.cpu.send_msg)
                self._send(node, self.nodes[act.node], nbytes, done, self._pull_arrives, node.id, act)
            else:
                self.cancelled.add((node.id, act.call))
                self._at(self.env.now, self._ended, node, act.call, False)
        self._schedule_tick(node)

    def _ended(self, node: _Node, call: int, failed: bool) -> None:
        self.partial.pop((node.id, call), None)
        self._execute(node, node.core.ended(call, self.env.now, failed))

    def _schedule_tick(self, node: _Node) -> None:
        wake = node.core.wake_at(self.env.now)
        if wake is not None and wake < node.tick_at:
            node.tick_at = wake
            self._at(wake, self._tick, node, wake)

    def _tick(self, node: _Node, planned: float) -> None:
        if node.tick_at != planned:
            return
        node.tick_at = math.inf
        self._execute(node, node.core.tick(self.env.now))

    def _pull_arrives(self, asker: int, sub: Subscribe) -> None:
        resp = self.nodes[sub.node]
        done = self._cpu(resp, self.cpu.recv_msg)
        self._at(done, self._serve_start, resp, asker, sub)

    def _serve_start(self, resp: _Node, asker: int, sub: Subscribe) -> None:
        self._serve_step(resp, asker, sub.call, resp.core.serve(sub.request, self.env.now))

    def _serve_step(self, resp: _Node, asker: int, call: int, pc: PullCall) -> None:
        if (asker, call) in self.cancelled:
            return
        if resp.cpu_free > self.env.now:  # the server is busy: this call's next step waits its turn
            resp.pending.append((asker, call, pc))
            if not resp.draining:
                resp.draining = True
                self._at(resp.cpu_free, self._drain, resp)
            return
        self._step(resp, asker, call, pc)

    def _drain(self, resp: _Node) -> None:
        """The server's CPU is free: run the steps that waited for it, in order, until it is busy again."""
        resp.draining = False
        while resp.pending and resp.cpu_free <= self.env.now:
            asker, call, pc = resp.pending.popleft()
            if (asker, call) not in self.cancelled:
                self._step(resp, asker, call, pc)
        if resp.pending:
            resp.draining = True
            self._at(resp.cpu_free, self._drain, resp)

    def _step(self, resp: _Node, asker: int, call: int, pc: PullCall) -> None:
        now = self.env.now
        step = pc.next(now)
        dst = self.nodes[asker]
        if isinstance(step, End):
            self._send(resp, dst, MSG_OVERHEAD, now, self._stream_ends, dst, call)
        elif isinstance(step, Wait):
            self._wait(resp, asker, call, pc, step.until)
        else:
            assert isinstance(step, Send)
            done = now
            last = len(step.messages) - 1
            cs = step.changes
            again = step.round.updates is cs.updates and cs.sources is not None and "sim" in cs.memo
            per_msg, per_row = ((self.cpu.shared_msg, self.cpu.shared_row) if again
                                else (self.cpu.send_msg, self.cpu.send_row))
            cs.memo["sim"] = True
            for i, msg in enumerate(step.messages):
                rows, nbytes = self._rows_bytes(msg)
                if i == last:
                    nbytes += 12 * len(cs.version_vector)
                done = self._cpu(resp, per_msg + per_row * rows)
                self._send(resp, dst, nbytes, done, self._batch_arrives, dst, call, msg, i == last, step, resp)
            if step.pause_s:  # as peer.py: the next round or the next change the call wants
                self._wait(resp, asker, call, pc, done + step.pause_s)
            else:
                self._at(done, self._serve_step, resp, asker, call, pc)

    def _wait(self, resp: _Node, asker: int, call: int, pc: PullCall, until: float) -> None:
        """The call's next step waits until `until` or a change it wants, whichever comes first."""
        token = (asker, call, until)
        resp.waiting.setdefault(pc.req.shard, []).append((token, asker, call, pc))
        self._at(until, self._wait_over, resp, pc.req.shard, token)

    def _wait_over(self, resp: _Node, shard: int, token: tuple) -> None:
        waiters = resp.waiting.get(shard, [])
        for i, w in enumerate(waiters):
            if w[0] is token:
                del waiters[i]
                self._serve_step(resp, *w[1:])
                return

    def _changed(self, node: _Node, changed: dict[int, set[int]], source: int) -> None:
        for s, origins in changed.items():
            waiters = node.waiting.get(s)
            if not waiters:
                continue
            keep = []
            for w in waiters:
                if w[3].wants(origins, source):
                    self._at(self.env.now, self._serve_step, node, *w[1:])
                else:
                    keep.append(w)
            node.waiting[s] = keep

    def _batch_arrives(self, node: _Node, call: int, msg: list[TableUpdate], last: bool, step: Send,
                       resp: _Node) -> None:
        rows = sum(len(u) for u in msg)
        done = self._cpu(node, self.cpu.recv_msg + self.cpu.recv_row * rows)
        self._at(done, self._apply_batch, node, call, msg, last, step, resp)

    def _apply_batch(self, node: _Node, call: int, msg: list[TableUpdate], last: bool, step: Send,
                     resp: _Node) -> None:
        key = (node.id, call)
        if key in self.cancelled:
            return
        parts = self.partial.setdefault(key, [])
        parts.extend(msg)
        cs = step.changes
        applied = node.core.batch(call, msg, last, step.round.complete, cs.version_vector, cs.counter, step.round.id,
                                  resp.core.incarnation)
        if last:
            self.partial.pop(key, None)
            if applied is not None:
                self._seen(node, parts)

    def _stream_ends(self, node: _Node, call: int) -> None:
        if (node.id, call) not in self.cancelled:
            self._ended(node, call, False)

    def _seen(self, node: _Node, updates: list[TableUpdate]) -> None:
        for u in updates:
            if len(u):
                self.vis.seen(node.id, u.keys, u.ts, self.env.now)

    # ---- the trainer
    def _put(self, batch_no: int, row0: int) -> None:
        keys = self.batches[batch_no]
        for r, part in write_targets(self.spec, keys):
            node = self.nodes[r]  # DC 0's replica r
            rows = row0 + np.flatnonzero(np.isin(keys, part)) if row0 >= 0 else None  # None: a warm-up batch
            done = self._cpu(node, self.cpu.put_msg + self.cpu.put_row * part.size)
            self._at(done, self._put_applied, node, part, rows)

    def _put_applied(self, node: _Node, keys: np.ndarray, rows: np.ndarray | None) -> None:
        stamp = int(self.env.now * 1e9)
        vals = np.zeros((keys.size, 1), np.float32)
        stamp = node.store.put("emb", keys, vals, ts=stamp)
        if rows is not None:
            self.vis.stamp(rows, np.full(rows.size, stamp, np.int64))
        self.vis.seen(node.id, keys, np.full(keys.size, stamp, np.int64), self.env.now)
        if node.pusher is not None:
            up = TableUpdate("emb", keys, vals, np.full(keys.size, stamp, np.int64),
                             np.full(keys.size, node.id, np.int32))
            node.pusher.put([up])
            for dest in node.pusher.boxes:
                self._push_pump(node, dest)

    # ---- central push
    def _push_pump(self, origin: _Node, dest: int) -> None:
        pusher = origin.pusher
        while True:
            batch = pusher.take(dest, self.env.now)
            if batch is None:
                return
            rows, nbytes = self._rows_bytes(batch)
            done = self._cpu(origin, self.cpu.send_msg + self.cpu.send_row * rows)
            self._send(origin, self.nodes[dest], nbytes, done, self._push_arrives, origin, dest, batch)

    def _push_arrives(self, origin: _Node, dest: int, batch: list[TableUpdate]) -> None:
        node = self.nodes[dest]
        rows = sum(len(u) for u in batch)
        done = self._cpu(node, self.cpu.recv_msg + self.cpu.recv_row * rows)
        self._at(done, self._push_applied, origin, node, batch)

    def _push_applied(self, origin: _Node, node: _Node, batch: list[TableUpdate]) -> None:
        node.store.apply(batch, source=origin.id)
        self._seen(node, batch)
        self._send(node, origin, MSG_OVERHEAD, self.env.now, self._push_acked, origin, node.id)

    def _push_acked(self, origin: _Node, dest: int) -> None:
        origin.pusher.acked(dest)
        self._push_pump(origin, dest)

    # ---- checkpoints
    def _checkpoint(self) -> None:
        origin = self.nodes[0]
        snap = [origin.store.dump(t) for t in origin.store.tables]
        rows = sum(len(u) for u in snap)
        per = max(1, self.spec.max_message_bytes // self.entry)
        msgs = [[u.take(np.arange(lo, min(lo + per, len(u))))] for u in snap for lo in range(0, len(u), per)]
        if rows:
            for node in self.nodes[1:]:
                self._ship(origin, node, msgs, 0)
        self._at(self.env.now + self.spec.checkpoint_s, self._checkpoint)

    def _ship(self, origin: _Node, node: _Node, msgs: list, i: int) -> None:
        if i >= len(msgs):
            return
        rows, nbytes = self._rows_bytes(msgs[i])
        done = self._cpu(origin, self.cpu.send_msg + self.cpu.send_row * rows)
        self._send(origin, node, nbytes, done, self._ship_arrives, origin, node, msgs, i)

    def _ship_arrives(self, origin: _Node, node: _Node, msgs: list, i: int) -> None:
        rows = sum(len(u) for u in msgs[i])
        done = self._cpu(node, self.cpu.recv_msg + self.cpu.recv_row * rows)
        self._at(done, self._ship_applied, origin, node, msgs, i)

    def _ship_applied(self, origin: _Node, node: _Node, msgs: list, i: int) -> None:
        node.store.apply(msgs[i], source=origin.id)
        self._seen(node, msgs[i])
        self._send(node, origin, MSG_OVERHEAD, self.env.now, self._ship, origin, node, msgs, i + 1)

    def _measure_from(self) -> None:
        """The measured stream begins: WAN bytes, NIC and CPU time count from here."""
        self.wan_bytes_warm = self.wan_bytes
        for node in self.nodes:
            node.busy_warm = (node.nic_wan.busy, node.cpu_busy)

    # ---- a run
    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Simulate the stream and the drain; the same keys as bench.run_mode plus the origin's NIC and CPU use."""
        t_wall = time.perf_counter()
        spec = self.spec
        if self.mode == "ekko":
            for node in self.nodes:
                self._execute(node, node.core.start(self.env.now))
        elif self.mode == "push":
            for r, _ in {(r, 0) for b in self.batches for r, _ in write_targets(spec, b)}:
                origin = self.nodes[r]
                origin.pusher = Pusher([n.id for n in self.nodes if n.id != r], max_bytes=spec.max_message_bytes)
        else:
            self._at(self.env.now + spec.checkpoint_s, self._checkpoint)
        row0 = 0
        for i, b in enumerate(self.batches):
            self._at(self.t0 + i * spec.batch_every_s, self._put, i, row0 if i >= self.warm else -1)
            row0 += b.size if i >= self.warm else 0
        self._at(self.t_measured, self._measure_from)
        end = self.stream_end + spec.drain_s + (spec.checkpoint_s * 1.5 if self.mode == "checkpoint" else 0.0)
        t = self.env.now
        while t < end:  # stop early once every put row is visible everywhere
            t = min(end, t + 0.25)
            self.env.run(until=t)
            if progress:
                progress(f"{self.mode}: simulated {t - 1.0:.2f} s of {end - 1.0:.1f} s")
            if t > self.stream_end and np.isfinite(self.vis.worst).all():
                break
        lat = self.vis.latencies()
        origin_ids = sorted({r for b in self.batches for r, _ in write_targets(spec, b)})
        span = max(1e-9, self.stream_end - self.t_measured)
        wan = self.wan_bytes - self.wan_bytes_warm
        return {"mode": self.mode, "updates": int(lat.size), "visible": int(np.isfinite(lat).sum()),
                "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "wan_bytes": int(wan),
                "wan_bytes_per_update": wan / max(1, lat.size),
                "origin_nic_util": max(self.nodes[r].nic_wan.busy - self.nodes[r].busy_warm[0] for r in origin_ids) / span,
                "origin_cpu_util": max(self.nodes[r].cpu_busy - self.nodes[r].busy_warm[1] for r in origin_ids) / span,
                "servers": len(self.nodes), "messages": self.messages, "sim_s": float(self.env.now - 1.0),
                "wall_s": time.perf_counter() - t_wall}


def simulate(spec: SimSpec, modes: tuple[str, ...] = ("ekko", "push", "checkpoint"), cpu: CpuCost | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every mode for one SimSpec; the keys of bench.run_bench (floor, p50/p99 per mode, WAN bytes) plus NIC and
    CPU use at the origin and the model's parameters."""
    cpu = cpu or CpuCost(dim=spec.dim)
    res = {m: Simulation(spec, m, cpu).run(progress) for m in modes}
    entry = spec.dim * 4 + ENTRY_OVERHEAD
    links = spec.dcs - 1
    out: dict[str, Any] = {"dcs": spec.dcs, "servers_per_dc": spec.replicas, "servers": spec.dcs * spec.replicas,
                           "floor_s": physical_floor(spec)}
    for m, r in res.items():
        out[f"{m}_visible"], out[f"{m}_updates"] = r["visible"], r["updates"]
        out[f"{m}_p50_s"], out[f"{m}_p99_s"] = r["p50_s"], r["p99_s"]
        out[f"{m}_origin_nic_util"], out[f"{m}_origin_cpu_util"] = r["origin_nic_util"], r["origin_cpu_util"]
    if "ekko" in res:
        out.update(wan_bytes_per_update=res["ekko"]["wan_bytes_per_update"],
                   wan_bytes_ideal_per_update=entry * links)
    out["cpu_model"] = cpu.to_json()
    out["runs"] = list(res.values())
    return out


# ---- measuring the real server's CPU costs
def _cache_file(dim: int) -> Path:
    """Where measured costs are kept: per dim, machine, Python and version of the server's code (a change to the
    server measures again)."""
    import hashlib

    import recmine.ekko.ps as ps

    code = hashlib.sha256()
    for f in sorted(Path(ps.__file__).parent.glob("*.py")) + [Path(__file__).with_name("wan.py")]:
        code.update(f.read_bytes())
    tag = f"{platform.node()}-{platform.python_version()}-{code.hexdigest()[:12]}"
    base = os.environ.get("RECMINE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME",
                                                                          os.path.expanduser("~/.cache")), "recmine")
    return Path(base) / f"ekko-cpu-dim{dim}-{tag}.json"


def _phase(c: Any, dim: int, k: int, puts: int, rng: np.random.Generator,
           idle: list[float]) -> tuple[list[float], int, int]:
    """Write `puts` Puts of `k` fresh keys to node 0, wait until the last server has them; returns CPU seconds each
    process (servers, then the WAN emulator) spent beyond its `idle` rate, rounds applied at node 1, WAN bytes."""
    pids = [n.proc.pid for n in c.nodes] + [c.wan_proc.pid]
    far = [c.client(n.node_id) for n in c.nodes[1:]]
    try:
        pulls0 = far[0].stats()["pulls"] if far else 0
        if far:
            c.wan_bytes(reset=True)
        before = [proc_cpu(p) for p in pids]
        t0 = time.monotonic()
        base = int(rng.integers(1 << 40))
        with c.client(0) as trainer:
            for i in range(puts):
                trainer.put("emb", np.arange(base + i * k, base + (i + 1) * k),
                            rng.normal(size=(k, dim)).astype(np.float32))
                time.sleep(0.005)
        last = np.arange(base + (puts - 1) * k, base + puts * k)
        deadline = time.monotonic() + 30
        for cl in far:
            while not cl.get("emb", last)[1].all() and time.monotonic() < deadline:
                time.sleep(0.01)
        used = [proc_cpu(p) - b - i * (time.monotonic() - t0) for p, b, i in zip(pids, before, idle, strict=True)]
        rounds = max(1, far[0].stats()["pulls"] - pulls0) if far else puts
        return used, rounds, sum(c.wan_bytes().values()) if far else 0
    finally:
        for cl in far:
            cl.close()


def cached_cpu(dim: int = 64) -> CpuCost | None:
    """The CPU costs measure_cpu found for this dim, machine and server code, if it ran before (else None)."""
    cache = _cache_file(dim)
    return CpuCost(**json.loads(cache.read_text())) if cache.exists() else None


def measure_cpu(dim: int = 64, puts: int = 100, refresh: bool = False) -> CpuCost:
    """Measure what real PS processes spend, from the kernel's accounting of their threads: per Put, per Pull round
    sent (found and encoded, or a shared round sent again) and received, per message and per row, and what the WAN
    emulator spends per message and byte. Clusters of 1, 2 and 8 DCs (one server each) carry rounds of 1 and of
    256 rows. Cached per dim, machine and version of the server's code (refresh=True measures again)."""
    if not refresh and (known := cached_cpu(dim)) is not None:
        return known
    cache = _cache_file(dim)
    from recmine.ekko.lab.cluster import LocalCluster

    t0, machine0, own0 = time.monotonic(), machine_cpu(), _own_and_children_cpu()
    rng = np.random.default_rng(0)
    sizes = (1, 256)
    got: dict[tuple[int, int], list[tuple[list[float], int, int]]] = {}
    idle = []
    for dcs in (1, 2, 8):
        topo = {"dcs": dcs, "replicas": 1, "shards": 1, "tables": {"emb": dim}, "rtt_ms": 2.0, "nic_mbps": 10000.0}
        with LocalCluster(topo) as c:
            time.sleep(0.3)
            pids = [n.proc.pid for n in c.nodes] + [c.wan_proc.pid]
            before = [proc_cpu(p) for p in pids]
            time.sleep(0.5)
            rates = [(proc_cpu(p) - b) / 0.5 for p, b in zip(pids, before, strict=True)]
            idle += rates[:-1]
            for k in sizes:
                got.setdefault((dcs, k), []).append(_phase(c, dim, k, puts, rng, rates))

    def per_round(dcs: int, k: int, proc: int) -> float:
        """CPU seconds process `proc` spent per round (per Put on a 1-DC cluster)."""
        runs = got[(dcs, k)]
        return sum(u[proc] for u, _, _ in runs) / sum(r for _, r, _ in runs)

    def fit(per: dict[int, float], rows: dict[int, float]) -> tuple[float, float]:
        """(per message, per row) through the two sizes."""
        k1, k2 = sizes
        b = max(0.0, (per[k2] - per[k1]) / max(1e-9, rows[k2] - rows[k1]))
        return max(1e-6, per[k1] - b * rows[k1]), b

    rounds = {k: sum(r for _, r, _ in got[(2, k)]) for k in sizes}
    rows = {k: k * puts * len(got[(2, k)]) / rounds[k] for k in sizes}  # a round may carry several Puts
    put = {k: per_round(1, k, 0) for k in sizes}
    # node 0 of the 2-DC cluster: Puts + one round per subscriber; of the 8-DC cluster: Puts + one round found and
    # encoded + six sent again (the seven other DCs ask the same): the differences isolate each
    full = {k: per_round(2, k, 0) - put[k] * puts * len(got[(2, k)]) / rounds[k] for k in sizes}
    shared = {k: (per_round(8, k, 0) - per_round(2, k, 0)) / 6 for k in sizes}
    recv = {k: per_round(2, k, 1) for k in sizes}
    proxy = {k: per_round(2, k, -1) for k in sizes}
    wan = {k: sum(b for _, _, b in got[(2, k)]) / rounds[k] for k in sizes}
    # cores everything else on the machine used meanwhile: a cost measured beside other work is inflated (a loaded
    # run measured send 2-3x a quiet one), so it is returned but never cached for later runs
    other = (machine_cpu() - machine0 - (_own_and_children_cpu() - own0)) / (time.monotonic() - t0)
    source = f"measured {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} CPUs)"
    if other > QUIET_OTHER_CORES:
        source += f", other work used {other:.2f} cores meanwhile: not cached"
    cost = CpuCost(*fit(put, dict(zip(sizes, sizes, strict=True))), *fit(full, rows), *fit(shared, rows),
                   *fit(recv, rows), *fit(proxy, wan), idle=float(np.median(idle)), dim=dim, source=source)
    if other <= QUIET_OTHER_CORES:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(cost.to_json()))
    return cost


QUIET_OTHER_CORES = 0.25  # measure_cpu caches only what it measured while other work took at most this many cores


def _own_and_children_cpu() -> float:
    """CPU seconds of this process and of its children already waited for (the clusters' servers and emulator)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def scale_rows(dcs: list[int], base: SimSpec, modes: tuple[str, ...] = ("ekko", "push", "checkpoint"),
               cpu: CpuCost | None = None, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`simulate` at each DC count (the rest of `base` fixed), one row each with the ratios the scale targets
    name: ekko p50 / floor, push p99 / ekko p99, WAN bytes / ideal, checkpoint p50 / ekko p50."""
    rows = []
    for n in dcs:
        spec = dataclasses.replace(base, dcs=n)
        r = simulate(spec, modes, cpu, progress=(lambda m, n=n: progress(f"[{n} DCs] {m}")) if progress else None)
        runs = r.pop("runs")
        r.pop("cpu_model")
        if "ekko" in modes:
            r["ekko_p50/floor"] = r["ekko_p50_s"] / r["floor_s"]
            r["wan/ideal"] = r["wan_bytes_per_update"] / r["wan_bytes_ideal_per_update"]
        if "ekko" in modes and "push" in modes:
            r["push_p99/ekko_p99"] = r["push_p99_s"] / r["ekko_p99_s"]
        if "ekko" in modes and "checkpoint" in modes:
            r["ckpt/ekko_p50"] = r["checkpoint_p50_s"] / r["ekko_p50_s"]
        r["wall_s"] = sum(x["wall_s"] for x in runs)
        rows.append(r)
    return rows
