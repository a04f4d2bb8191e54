"""One WAN link replayed in simulated time, in one process: the trainer's PS and a far DC's PS are real
`ParamStore`s, and between them run the real scheduler (`SloScheduler`, with its codec), the Pull protocol core
(`sync.Responder` / `sync.Asker`) and the wire encoding (`wire.rows_to_pb` / `pb_to_rows`, PullBatch byte sizes
counted). Only the network is modelled: the scheduler's byte budget is the link, rounds arrive one one-way delay
after they were sent, in order. Deterministic and fast (no sockets, no sleeping), so scheduling policies and codecs
can be compared on whole streams in seconds and tested exactly; the measured numbers come from the real cluster
(scenarios.py)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from recmine.ekko.ps.scheduler import SloScheduler, Traffic
from recmine.ekko.ps.store import ChangeSet, ParamStore
from recmine.ekko.ps.sync import Asker, Responder, Round, Sender, SendEverything
from recmine.ekko.ps.wire import pb_to_rows, pb_to_vv, rows_to_pb, stubs, vv_to_pb


class SimClock:
    """Simulated seconds (the scheduler's and traffic's clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Call:
    """One open Pull of one shard: the responder's side, and when the call ends."""

    responder: Responder
    ends: float


@dataclass
class Link:
    """`src` (node 0) feeds `dst` (node 1) over one link; `sender` picks each round (a SloScheduler or
    SendEverything). Drive it with `advance(seconds)`."""

    src: ParamStore
    dst: ParamStore
    sender: Sender
    clock: SimClock
    delay_s: float = 0.025
    round_s: float = 0.05
    stream_s: float = 10.0
    wire_bytes: int = 0  # serialized PullBatch bytes that crossed the link
    rounds: int = 0
    ticks: int = 0
    _calls: dict[int, _Call] = field(default_factory=dict)
    _askers: dict[int, Asker] = field(default_factory=dict)
    _flight: deque = field(default_factory=deque)  # (arrival time, shard, PullBatch bytes)

    def __post_init__(self) -> None:
        self.pb2, _ = stubs()
        self._dims = {t: self.src.dim(t) for t in self.src.tables}
        for s in range(self.src.num_shards):
            self._askers[s] = Asker(self.dst, s, self.src.node_id)

    def _open(self, shard: int) -> _Call:
        asker = self._askers[shard]
        vv, since, since_inc, applied = asker.request()
        call = _Call(Responder(self.src, self.sender, shard, vv, since, self.dst.node_id, 1, None, applied, 1 << 30,
                               since_inc, 0), self.clock.now + self.stream_s)
        self._calls[shard] = call
        return call

    def _send(self, shard: int, rnd: Round, cs: ChangeSet) -> None:
        msg = self.pb2.PullBatch(rows=[rows_to_pb(self.pb2, u) for u in rnd.updates], last=True,
                                 complete=rnd.complete, counter=cs.counter,
                                 version_vector=vv_to_pb(self.pb2, cs.version_vector), round=rnd.id)
        data = msg.SerializeToString()
        self.wire_bytes += len(data)
        self.rounds += 1
        self._flight.append((self.clock.now + self.delay_s, shard, data))

    def _deliver(self, until: float) -> None:
        while self._flight and self._flight[0][0] <= until:
            _, shard, data = self._flight.popleft()
            msg = self.pb2.PullBatch.FromString(data)
            rows = [pb_to_rows(r, self._dims, self.dst) for r in msg.rows]
            self._askers[shard].batch(rows, True, msg.complete, pb_to_vv(msg.version_vector), msg.counter, msg.round)

    def tick(self) -> None:
        """One round: deliver what arrived, then every shard with changes sends its next round."""
        self._deliver(self.clock.now)
        n = self.src.num_shards
        for s in ((self.ticks + i) % n for i in range(n)):  # the shards' streams take turns at the budget
            call = self._calls.get(s)
            if call is None or self.clock.now >= call.ends:
                if call is not None:  # the next Pull goes out once the last one's rounds have arrived
                    self._deliver(float("inf"))
                call = self._open(s)
            cs = call.responder.changes()
            if len(cs) == 0:
                continue
            rnd = call.responder.pick(cs)
            if rnd.updates or rnd.id:
                self._send(s, rnd, cs)
        self.ticks += 1

    def advance(self, seconds: float) -> None:
        """Run rounds for `seconds` of simulated time."""
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-12:
            self.tick()
            self.clock.now = min(end, self.clock.now + self.round_s)
        self._deliver(self.clock.now)

    def settle(self, max_s: float = 60.0) -> float:
        """Run until the destination holds exactly what the source holds (the stream has stopped); returns the
        simulated seconds it took. Raises TimeoutError after `max_s`."""
        t0 = self.clock.now
        while not self.converged():
            if self.clock.now - t0 > max_s:
                raise TimeoutError(f"link did not converge within {max_s} simulated seconds")
            self.advance(self.round_s)
        return self.clock.now - t0

    def converged(self) -> bool:
        """Whether `dst` holds every row of `src` with the same value and version."""
        a, b = self.src.state_digest(), self.dst.state_digest()
        for t, (k, v, ts, o) in a.items():
            k2, v2, ts2, o2 = b[t]
            if not (k.shape == k2.shape and (k == k2).all() and (v == v2).all() and (ts == ts2).all()
                    and (o == o2).all()):
                return False
        return True


def make_link(tables: dict[str, int], scheduler: str = "all", bytes_per_s: float = 1e9, shards: int = 2,
              delay_s: float = 0.025, round_s: float = 0.05, traffic_half_life_s: float = 30.0) -> Link:
    """A link from a fresh trainer-side store (node 0) to a fresh far store (node 1)."""
    clock = SimClock()
    src, dst = ParamStore(tables, shards, node_id=0), ParamStore(tables, shards, node_id=1)
    sender: Sender = SendEverything() if scheduler == "all" else SloScheduler(
        scheduler, bytes_per_s, round_s, traffic=Traffic(traffic_half_life_s, clock), clock=clock)
    return Link(src, dst, sender, clock, delay_s, round_s)
