"""The protocol core of one parameter server, without I/O: events in, actions out (in the style of h11).

It decides who leads each shard in each data centre (a deterministic rotation, the first replica this node believes
alive), which subscriptions this node keeps open and to whom (leaders pull from the leaders of the other DCs and
from the other replicas of their own DC; followers pull from their leader), what each subscription asks for
(version vector, counter, acknowledged rounds: `sync.Asker`), what each answered round carries and how it is cut
into messages (`sync.Responder` with the SLO-aware `Sender`), and failover: a peer whose call fails is presumed dead
for a backoff that doubles per consecutive failure, and every subscription whose source changes because of it is
cancelled and reopened elsewhere.

The core owns no socket, task or clock: a driver passes the time (`now`, seconds on any monotonic clock) with each
event and carries out the actions it gets back. `peer.py` drives it over gRPC and asyncio; `lab/sim.py` drives the
same objects over a modelled network in simulated time; tests drive it by hand.

Events: `start`, `tick` (time passed), `batch` (a message of an open subscription arrived), `ended` (a subscription
ended: normally, failed, or cancelled by us), and on the serving side `serve` (a Pull arrived) whose `PullCall.next`
says, each time it is asked, what to do next: send a round, wait for a change, pause, or end.
Actions: `Subscribe` (open a Pull to a node) and `Cancel` (end one); `Core.wake_at` says when time alone will change
a decision (a presumed-dead peer's backoff ends, a pull interval passes), so a driver needs no polling."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recmine.ekko.ps.compress import unpack
from recmine.ekko.ps.scheduler import ROW_OVERHEAD
from recmine.ekko.ps.store import ChangeSet, ParamStore, TableUpdate, VersionVector
from recmine.ekko.ps.sync import (
    Asker,
    Incarnations,
    Responder,
    Round,
    Sender,
    SendEverything,
    SharedChanges,
    Superseded,
)

RETRY_S = 0.05  # pause before a link whose call failed tries again


@dataclass(frozen=True)
class Member:
    """A parameter server of the deployment as the protocol sees it: id, data centre, replica index in the DC."""

    node_id: int
    dc: int
    replica: int


class Membership:
    """The deployment's servers by DC and the WAN graph between DCs (a full mesh, or a binary tree on DC ids)."""

    def __init__(self, members: Iterable[Member], num_dcs: int, topology: str = "mesh") -> None:
        if topology not in ("mesh", "tree"):
            raise ValueError(f"topology must be mesh or tree, got {topology!r}")
        self.members = {m.node_id: m for m in members}
        self.num_dcs = int(num_dcs)
        self.topology = topology
        by_dc: dict[int, dict[int, int]] = {}
        for m in self.members.values():
            reps = by_dc.setdefault(m.dc, {})
            if m.replica in reps:
                raise ValueError(f"DC {m.dc} has two servers with replica index {m.replica}")
            reps[m.replica] = m.node_id
        self._by_dc = {dc: [reps[r] for r in sorted(reps)] for dc, reps in by_dc.items()}

    def dc_of(self, node: int) -> int:
        """The DC of a server."""
        return self.members[node].dc

    def dc_replicas(self, dc: int) -> list[int]:
        """Node ids of a DC's servers, by replica index."""
        return self._by_dc.get(dc, [])

    def wan_neighbours(self, dc: int) -> list[int]:
        """The DCs `dc`'s leaders pull from: every other DC (mesh) or its tree neighbours (parent and children)."""
        n = self.num_dcs
        if self.topology == "mesh":
            return [d for d in range(n) if d != dc]
        nb = [(dc - 1) // 2] if dc > 0 else []
        return nb + [c for c in (2 * dc + 1, 2 * dc + 2) if c < n]


@dataclass(frozen=True)
class Link:
    """One subscription slot of a node for one shard: `intra` to a replica of its own DC (`peer` = that node) or
    `wan` to another DC (`peer` = that DC, whose current leader is the source)."""

    shard: int
    kind: str
    peer: int


@dataclass
class Request:
    """What a subscription asks (the fields of ekko.proto's PullRequest)."""

    shard: int
    version_vector: VersionVector
    since: int | None
    since_incarnation: int
    applied: list[int]
    requester: int
    incarnation: int
    origins: list[int] | None
    wait_ms: int
    stream_ms: int
    max_message_bytes: int


@dataclass
class Subscribe:
    """Action: open subscription `call` (a Pull) to node `node` with `request`."""

    call: int
    link: Link
    node: int
    request: Request


@dataclass
class Cancel:
    """Action: end subscription `call` from this side (its source is no longer the one to pull from)."""

    call: int


Action = Subscribe | Cancel


@dataclass
class _Slot:
    """A link's state: its open call (and the source it pulls from), the earliest time of its next call, and one
    Asker per source it has pulled from (what this node acknowledged to each)."""

    link: Link
    origins: list[int] | None
    call: int = 0
    node: int = -1
    started: float = 0.0
    cancelling: bool = False
    not_before: float = 0.0
    askers: dict[int, Asker] = field(default_factory=dict)


@dataclass
class Timing:
    """The protocol's time constants (seconds, or ms where the wire carries ms)."""

    wait_ms: int = 1000  # long-poll hold time when nothing is new
    stream_ms: int = 10000  # a subscription streams rounds this long, then reopens
    pull_interval_s: float = 0.0  # least time between the starts of two calls of one link
    dead_backoff_s: float = 1.5  # longest a failed peer is presumed dead
    max_message_bytes: int = 4 * 1024 * 1024


class Core:
    """The protocol state of one parameter server (mode "ekko"): subscriptions it keeps, who leads what as this
    node sees it, and the serving side of the Pulls it answers."""

    def __init__(self, me: int, membership: Membership, store: ParamStore, sender: Sender | None = None,
                 timing: Timing | None = None, incarnation: int = 1) -> None:
        if me not in membership.members:
            raise ValueError(f"node {me} is not in the membership")
        self.me = me
        self.dc = membership.dc_of(me)
        self.membership = membership
        self.store = store
        self.sender: Sender = sender or SendEverything()
        self.timing = timing or Timing()
        self.incarnation = incarnation
        self.peers = Incarnations(store)  # a restarted peer is sent again what it delivered here
        self.shared = SharedChanges()  # one answer (and one encoding) for the calls that ask the same
        self.dead_until: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.pulls = 0  # rounds applied
        self.rows_received = 0
        self._next_call = 0
        self._calls: dict[int, _Slot] = {}
        self._slots: dict[Link, _Slot] = {}  # links opened so far (each keeps its askers)
        self._started = False

    # ---- who leads
    def alive(self, node: int, now: float) -> bool:
        """This node's view: a peer is presumed alive unless a call to it failed within its backoff."""
        return node == self.me or self.dead_until.get(node, -np.inf) <= now

    def leader_of(self, dc: int, shard: int, now: float) -> int:
        """The shard's leader in a DC: replica (shard + i) mod R for the first i whose server is presumed alive."""
        reps = self.membership.dc_replicas(dc)
        r = len(reps)
        for i in range(r):
            node = reps[(shard + i) % r]
            if self.alive(node, now):
                return node
        return reps[shard % r]

    def wanted(self, now: float) -> dict[Link, int]:
        """Every link that should be open now and the node it pulls from. Within the DC a shard's leader pulls from
        every other replica presumed alive and a follower from its leader; across the WAN only the leader pulls,
        from the other DC's leader. A follower thus has one link per shard."""
        out: dict[Link, int] = {}
        reps = self.membership.dc_replicas(self.dc)
        for s in range(self.store.num_shards):
            leader = self.leader_of(self.dc, s, now)
            if leader != self.me:
                if self.alive(leader, now):
                    out[Link(s, "intra", leader)] = leader
                continue
            for node in reps:
                if node != self.me and self.alive(node, now):
                    out[Link(s, "intra", node)] = node
            for dc in self.membership.wan_neighbours(self.dc):
                out[Link(s, "wan", dc)] = self.leader_of(dc, s, now)
        return out

    # ---- events
    def start(self, now: float) -> list[Action]:
        """Open the subscriptions this node should have (see `wanted`)."""
        if self._started:
            raise RuntimeError("core already started")
        self._started = True
        return self.tick(now)

    def tick(self, now: float) -> list[Action]:
        """Time passed (or something changed): cancel subscriptions whose source moved, open the ones now due."""
        out: list[Action] = []
        want = self.wanted(now)
        for slot in self._calls.values():
            if want.get(slot.link) != slot.node and not slot.cancelling:
                slot.cancelling = True
                out.append(Cancel(slot.call))
        for link, src in want.items():
            slot = self._slots.get(link)
            if slot is None:
                # mesh: from each DC only the rows born there (every DC hears every other directly: each byte crosses
                # each link once); tree: everything, relayed hop by hop
                mesh = link.kind == "wan" and self.membership.topology == "mesh"
                slot = self._slots[link] = _Slot(link, self.membership.dc_replicas(link.peer) if mesh else None)
            if not slot.call and now >= slot.not_before:
                out.append(self._open(slot, src, now))
        return out

    def wake_at(self, now: float) -> float | None:
        """The earliest future time at which `tick` may decide differently with no other event (None: never)."""
        times = [t for t in self.dead_until.values() if t > now]
        times += [s.not_before for s in self._slots.values() if not s.call and s.not_before > now]
        return min(times) if times else None

    def batch(self, call: int, rows: list[TableUpdate], last: bool, complete: bool = False,
              vv: VersionVector | None = None, counter: int = 0, round_id: int = 0, incarnation: int = 0) -> int | None:
        """A message of subscription `call` arrived; on a round's last message the round is applied. Returns the rows
        it changed (None before a round's end, or for a call no longer open). ValueError for compressed rows that do
        not apply to what this store holds (compress.decode): the call has failed."""
        slot = self._calls.get(call)
        if slot is None:
            return None
        rows = [unpack(u, self.store) for u in rows]  # compressed rows that came in memory (the wire decodes its own)
        self.rows_received += sum(len(u) for u in rows)
        n = slot.askers[slot.node].batch(rows, last, complete, vv, counter, round_id, incarnation)
        if n is not None:
            self.pulls += 1
        return n

    def ended(self, call: int, now: float, failed: bool = False) -> list[Action]:
        """Subscription `call` ended: normally (the stream ran its course), by our Cancel, or `failed` (deadline,
        unreachable, broken stream). A round cut on its way is dropped and offered again later; a failed source is
        presumed dead for a backoff that doubles with each consecutive failure (a peer merely starting up costs
        ~0.1 s, a crashed one is skipped for up to dead_backoff_s)."""
        slot = self._calls.pop(call, None)
        if slot is None:
            return []
        node, slot.call = slot.node, 0
        cancelled, slot.cancelling = slot.cancelling, False
        asker = slot.askers[node]
        if failed and not cancelled:
            asker.failed()
            fails = self.failures[node] = self.failures.get(node, 0) + 1
            self.dead_until[node] = now + min(self.timing.dead_backoff_s, RETRY_S * 2 ** fails)
            slot.not_before = now + RETRY_S
        else:
            if cancelled:
                asker.failed()  # a round cut by our cancel is offered again next time
            self.failures.pop(node, None)
            slot.not_before = slot.started + self.timing.pull_interval_s
        return self.tick(now)

    def _open(self, slot: _Slot, node: int, now: float) -> Subscribe:
        asker = slot.askers.get(node)
        if asker is None:
            asker = slot.askers[node] = Asker(self.store, slot.link.shard, node, self.peers)
        vv, since, since_inc, applied = asker.request()
        self._next_call += 1
        slot.call, slot.node, slot.started, slot.cancelling = self._next_call, node, now, False
        self._calls[slot.call] = slot
        t = self.timing
        req = Request(slot.link.shard, vv, since, since_inc, applied, self.me, self.incarnation, slot.origins,
                      t.wait_ms, t.stream_ms, t.max_message_bytes)
        return Subscribe(slot.call, slot.link, node, req)

    def open_calls(self) -> dict[int, tuple[Link, int]]:
        """Open subscriptions: call -> (link, source node)."""
        return {c: (s.link, s.node) for c, s in self._calls.items()}

    # ---- serving
    def serve(self, req: Request, now: float) -> PullCall:
        """A Pull arrived: the call object that says, step by step, what to send (ValueError for a bad shard)."""
        if not 0 <= req.shard < self.store.num_shards:
            raise ValueError(f"shard {req.shard} out of range [0, {self.store.num_shards})")
        return PullCall(self, req, now)


@dataclass
class Send:
    """Step: send `messages` (the round cut to the message budget; the last one carries the round's end), then
    wait up to `pause_s`, or until a change the call wants, before asking again (a round cut short by the link's
    budget, or leaving compressed rows' residuals, waits for the next round or the next change)."""

    round: Round
    changes: ChangeSet
    messages: list[list[TableUpdate]]
    pause_s: float


@dataclass
class Wait:
    """Step: nothing to send; wait until the shard changes or `until`, then ask again."""

    until: float


@dataclass
class End:
    """Step: the call is over."""


Step = Send | Wait | End


class PullCall:
    """The serving side of one Pull call: a subscription that sends a round whenever the asker lacks something,
    holds the call while nothing is new (long poll), and ends after stream_ms (or, when a round found nothing new,
    after wait_ms), or when a newer call of the same asker for the same shard supersedes it."""

    def __init__(self, core: Core, req: Request, now: float) -> None:
        self.core = core
        self.req = req
        budget = req.max_message_bytes or core.timing.max_message_bytes
        self.budget = budget
        self.responder = Responder(core.store, core.sender, req.shard, req.version_vector, req.since, req.requester,
                                   req.incarnation, req.origins, req.applied, budget, req.since_incarnation,
                                   core.incarnation, core.peers, core.shared)
        self.end = now + max(0, req.stream_ms) / 1000.0
        self.first = True
        self._hold_until: float | None = None

    def wants(self, origins: set[int], source: int) -> bool:
        """Whether a change (rows born at `origins`, delivered by `source`) may give this waiting call something to
        send: not when it came from the asker (an echo) or when the call takes only other origins."""
        if source == self.req.requester:
            return False
        return self.req.origins is None or not origins.isdisjoint(self.req.origins)

    def next(self, now: float) -> Step:
        """What to do now."""
        if not self.first and now >= self.end and self._hold_until is None:
            return End()
        cs = self.responder.changes()
        if len(cs) == 0:
            if self._hold_until is None:
                self._hold_until = max(now + max(0, self.req.wait_ms) / 1000.0, self.end)
            if now < self._hold_until:
                return Wait(self._hold_until)
            if not self.first:
                return End()
        self._hold_until = None
        try:
            rnd = self.responder.pick(cs)
        except Superseded:
            return End()
        self.first = False
        pause = 0.0 if rnd.complete else self.core.sender.round_s
        return Send(rnd, cs, split_round(rnd.updates, self.budget), pause)


def split_round(updates: Sequence[TableUpdate], budget: int) -> list[list[TableUpdate]]:
    """A round's rows cut into messages of about `budget` bytes (at least one message, maybe empty: the round's
    end must reach the asker even when the round carries nothing)."""
    msgs: list[list[TableUpdate]] = [[]]
    size = 0
    for up in updates:
        per = max(1, budget // (up.values.shape[1] * 4 + ROW_OVERHEAD))
        for lo in range(0, len(up), per):
            part = up if lo == 0 and per >= len(up) else up.take(np.arange(lo, min(lo + per, len(up))))
            if size + part.nbytes() > budget and msgs[-1]:
                msgs.append([])
                size = 0
            msgs[-1].append(part)
            size += part.nbytes()
    return msgs
