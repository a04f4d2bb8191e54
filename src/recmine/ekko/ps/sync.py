"""The Pull protocol without I/O: what a responder sends round by round, and what an asker applies and acknowledges.

A subscription (one Pull call) is a sequence of rounds; the asker applies a round when its last batch arrives.
What the asker holds is known only from the asker: its version vector (raised by complete rounds it applied), the
responder counter of its last complete round, and the ids of the rounds it applied, which its next Pull
acknowledges. A sender that tracks what each asker holds (the SLO-aware scheduler) counts a round as held only once
it is acknowledged; an unacknowledged round (cut by a cancel, a deadline, a partition, a crash) is forgotten and its
rows are offered again. peer.py carries these objects' fields over gRPC; tests drive them directly."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from recmine.ekko.ps.store import ChangeSet, ParamStore, TableUpdate, VersionVector


@dataclass
class Round:
    """One round of a subscription: the rows sent, whether the asker then holds the whole change set, and the
    round's id (0: the sender does not track rounds, nothing to acknowledge)."""

    updates: list[TableUpdate]
    complete: bool
    id: int = 0


class Superseded(Exception):
    """A newer Pull of the same asker for the same shard has opened: this older call must stop sending."""


class Sender(Protocol):
    """Chooses what each round carries. `open` runs once per Pull call, with the rounds the asker says it applied;
    `pick` runs per round with the stream token `open` returned."""

    round_s: float

    def open(self, requester: int, incarnation: int, shard: int, applied: Sequence[int]) -> int:
        """A Pull call starts: account the asker's acknowledged rounds; returns this call's stream token."""
        ...

    def pick(self, cs: ChangeSet, requester: int, incarnation: int, budget: int, stream: int) -> Round:
        """This round's rows for `requester` out of the change set (raises Superseded for a stale stream)."""
        ...


class SendEverything:
    """Default sender: every changed row at once; complete rounds need no acknowledgement (the asker's version
    vector says what it holds)."""

    round_s = 0.0

    def open(self, requester: int, incarnation: int, shard: int, applied: Sequence[int]) -> int:
        """Nothing to account."""
        return 0

    def pick(self, cs: ChangeSet, requester: int, incarnation: int, budget: int, stream: int) -> Round:
        """Every changed row, complete."""
        return Round(cs.updates, True)


class Incarnations:
    """The process incarnation last seen of each peer. A new one means the peer restarted (maybe from an older
    snapshot) and may have lost rows it delivered here: the store then stops withholding those from it."""

    def __init__(self, store: ParamStore) -> None:
        self.store = store
        self.seen: dict[int, int] = {}

    def saw(self, node: int, incarnation: int) -> None:
        """Record `node`'s incarnation (0: unknown, ignored); on a change, its rows here may be echoed to it."""
        if not incarnation:
            return
        prev = self.seen.get(node)
        self.seen[node] = incarnation
        if prev is not None and prev != incarnation:
            self.store.forget_source(node)


class SharedChanges:
    """Answers of changes_since shared by the Pull calls that ask the same question: the same shard, counter, version
    vector (over the origins asked for) and origins. A mesh leader answers every other DC's leader with the same
    rows, so it finds them (and a driver encodes them) once per round instead of once per DC. An answer holds the
    nodes its rows came from; a call whose asker is one of them gets its own answer (no echo)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._answers: dict[tuple, ChangeSet] = {}
        self.hits = 0

    def get(self, store: ParamStore, shard: int, vv: VersionVector, since: int | None,
            origins: list[int] | None) -> ChangeSet:
        """The shared answer (computed on first ask), its `sources` filled in."""
        keep = None if origins is None else frozenset(origins)
        key = (shard, store.counter(shard), store.src_epoch, since, keep,
               tuple(sorted((o, t) for o, t in vv.items() if keep is None or o in keep)))
        cs = self._answers.get(key)
        if cs is not None:
            self.hits += 1
            return cs
        cs = store.changes_since(shard, vv, since, None, origins, sources=True)
        if len(self._answers) >= self.size:
            del self._answers[next(iter(self._answers))]
        self._answers[key] = cs
        return cs


class Responder:
    """One Pull call at the responder: the asker's version as this call advances it, and the rounds it picks.

    Within one call the rounds reach the asker in order or the call breaks, so after a complete round the call
    goes on from the responder's version and counter; a later call starts again from what the asker sends."""

    def __init__(self, store: ParamStore, sender: Sender, shard: int, vv: VersionVector, since: int | None,
                 requester: int, incarnation: int = 0, origins: Iterable[int] | None = None,
                 applied: Sequence[int] = (), budget: int = 4 << 20, since_incarnation: int = 0,
                 own_incarnation: int = 0, peers: Incarnations | None = None,
                 shared: SharedChanges | None = None) -> None:
        if peers is not None:
            peers.saw(requester, incarnation)
        self.store, self.sender, self.shard = store, sender, shard
        self.vv = dict(vv)
        # a counter from an earlier process of this responder means nothing now (counters restart with it)
        self.since = since if since_incarnation == own_incarnation else None
        self.requester, self.incarnation = requester, incarnation
        self.origins = list(origins) if origins else None
        self.budget = budget
        self.stream = sender.open(requester, incarnation, shard, applied)
        # calls that want the same rows get the same ChangeSet (and its encoding): only when the sender sends all
        self.shared = shared if isinstance(sender, SendEverything) else None

    def changes(self) -> ChangeSet:
        """What the asker lacks as far as this call knows. When that is nothing, the call's counter moves up to the
        responder's: the changes up to it were all examined and none is for this asker (echoes of its own rows, rows
        of other origins, rows it holds), so the next look starts after them instead of examining them again."""
        cs = None
        if self.shared is not None:
            cs = self.shared.get(self.store, self.shard, self.vv, self.since, self.origins)
            if self.requester in cs.sources:  # it holds some of those rows (it sent them): not the shared answer
                cs = None
        if cs is None:
            cs = self.store.changes_since(self.shard, self.vv, self.since, self.requester, self.origins)
        if len(cs) == 0:
            self.since = cs.counter
        return cs

    def pick(self, cs: ChangeSet) -> Round:
        """The next round out of `cs`; a complete round moves this call's view of the asker forward."""
        rnd = self.sender.pick(cs, self.requester, self.incarnation, self.budget, self.stream)
        if rnd.complete:
            self.since = cs.counter
            for o, t in cs.version_vector.items():
                if t > self.vv.get(o, 0):
                    self.vv[o] = t
        return rnd


@dataclass
class Asker:
    """The asker's side of its subscriptions to one responder for one shard: the round being collected, the
    responder counter of its last complete round (valid only for that responder incarnation), and the ids of the
    rounds it applied that the responder has not yet been told about."""

    store: ParamStore
    shard: int
    source: int
    peers: Incarnations | None = None
    since: int | None = None
    since_incarnation: int = 0
    applied: list[int] = field(default_factory=list)
    _parts: list[TableUpdate] = field(default_factory=list)
    _told: int = 0

    def request(self) -> tuple[VersionVector, int | None, int, list[int]]:
        """(version vector, since counter, its responder incarnation, applied rounds) for the next Pull."""
        self._parts = []
        self._told = len(self.applied)
        return self.store.version_vector(self.shard), self.since, self.since_incarnation, list(self.applied)

    def batch(self, rows: list[TableUpdate], last: bool, complete: bool = False, vv: VersionVector | None = None,
              counter: int = 0, round_id: int = 0, incarnation: int = 0) -> int | None:
        """One batch of the call; on a round's last batch apply the round and return the rows it changed. The first
        batch of a call proves the responder read the request, acknowledgements included."""
        if self._told:
            del self.applied[: self._told]
            self._told = 0
        self._parts.extend(rows)
        if not last:
            return None
        parts, self._parts = self._parts, []
        if self.peers is not None:
            self.peers.saw(self.source, incarnation)
        n = self.store.apply(parts, {self.shard: vv or {}} if complete else None, source=self.source)
        if round_id:
            self.applied.append(round_id)
        if complete:
            self.since, self.since_incarnation = counter, incarnation
        return n

    def failed(self) -> None:
        """The call broke: the partial round is dropped, and the responder may have restarted (its counter with it)."""
        self._parts = []
        self.since = None
