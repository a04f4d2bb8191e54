"""External int64 ids -> slots: an open-addressing hash table in two numpy arrays with numba kernels.

A Python dict of 10^8 ints needs ~10 GB and minutes to build; this table needs 16 bytes per entry at a load factor
<= 0.7 and builds at ~10^7 ids per second. Keys are any int64; a value >= 0 is a slot, -1 an empty entry, -2 a
deleted one (probing continues past it). Batch inserts are all-or-nothing: a duplicate inside the batch or an id
already present rolls the batch back and is reported."""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY, DELETED = -1, -2
_M64 = (1 << 64) - 1
MAX_LOAD = 0.7


@njit(cache=True, nogil=True, inline="always")
def _hash(key, mask):
    x = np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.int64(x & np.uint64(mask))


@njit(cache=True, nogil=True)
def _find(keys, vals, key):
    """Position of key in the table, or -1."""
    mask = keys.shape[0] - 1
    h = _hash(key, mask)
    while True:
        v = vals[h]
        if v == EMPTY:
            return -1
        if v != DELETED and keys[h] == key:
            return h
        h = (h + 1) & mask


@njit(cache=True, nogil=True)
def lookup(keys, vals, ids):
    """Slots of ids (-1 where absent)."""
    out = np.empty(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        p = _find(keys, vals, ids[i])
        out[i] = -1 if p < 0 else vals[p]
    return out


@njit(cache=True, nogil=True)
def _remove_batch(keys, vals, ids, count):
    for i in range(count):
        p = _find(keys, vals, ids[i])
        if p >= 0:
            vals[p] = DELETED


@njit(cache=True, nogil=True)
def insert(keys, vals, ids, first_slot):
    """Insert ids[i] -> first_slot + i (every slot already in the table is below first_slot); all or nothing.
    Returns (status, index, reused): status 0 ok, 1 ids[index] already present, 2 ids[index] repeats an earlier id
    of the batch; reused = DELETED entries taken over."""
    mask = keys.shape[0] - 1
    reused = 0
    for i in range(ids.shape[0]):
        key = ids[i]
        h = _hash(key, mask)
        free = -1
        while True:
            v = vals[h]
            if v == EMPTY:
                break
            if v == DELETED:
                if free < 0:
                    free = h
            elif keys[h] == key:
                _remove_batch(keys, vals, ids, i)
                return (2 if v >= first_slot else 1), i, 0
            h = (h + 1) & mask
        if free >= 0:
            h = free
            reused += 1
        keys[h] = key
        vals[h] = first_slot + i
    return 0, -1, reused


@njit(cache=True, nogil=True)
def remove(keys, vals, ids):
    """Mark ids deleted and return their slots; (-1, position) of the first unknown id, then nothing changes."""
    slots = lookup(keys, vals, ids)
    for i in range(ids.shape[0]):
        if slots[i] < 0:
            return slots, i
    _remove_batch(keys, vals, ids, ids.shape[0])
    return slots, -1


@njit(cache=True, nogil=True)
def build(ids, slots, keys, vals):
    """Fill an empty table with distinct ids -> slots."""
    mask = keys.shape[0] - 1
    for i in range(ids.shape[0]):
        h = _hash(ids[i], mask)
        while vals[h] != EMPTY:
            h = (h + 1) & mask
        keys[h] = ids[i]
        vals[h] = slots[i]


def capacity_for(n: int) -> int:
    """Table size (a power of two) for n entries at load <= 0.5 (room to grow before MAX_LOAD)."""
    return 1 << max(4, int(np.ceil(np.log2(max(1, n) / 0.5))))


class IdMap:
    """ids -> slots for an index's live rows; numba tables under a small Python API."""

    def __init__(self, capacity: int = 16) -> None:
        self.keys = np.zeros(capacity_for(capacity), np.int64)
        self.vals = np.full(self.keys.shape[0], EMPTY, np.int64)
        self.count = 0
        self.used = 0  # live + deleted entries: what probing walks over

    @classmethod
    def of(cls, ids: np.ndarray, live: np.ndarray) -> IdMap:
        """A table of the live rows (ids[s] -> s where live[s])."""
        slots = np.flatnonzero(np.asarray(live, np.bool_))
        m = cls(slots.size)
        build(np.asarray(ids, np.int64)[slots], slots.astype(np.int64), m.keys, m.vals)
        m.count = m.used = int(slots.size)
        return m

    @classmethod
    def of_tables(cls, keys: np.ndarray, vals: np.ndarray, count: int, used: int) -> IdMap:
        """A table saved earlier (keys/vals as written, e.g. memory-mapped); ValueError when malformed."""
        size = keys.shape[0]
        if keys.shape != vals.shape or keys.ndim != 1 or size < 16 or size & (size - 1) or not 0 <= count <= used <= size:
            raise ValueError(f"malformed id table: {keys.shape} keys, {vals.shape} values, {count} ids")
        m = cls.__new__(cls)
        m.keys, m.vals, m.count, m.used = keys, vals, int(count), int(used)
        return m

    def __len__(self) -> int:
        return self.count

    def copy(self) -> IdMap:
        """An independent copy."""
        m = IdMap.__new__(IdMap)
        m.keys, m.vals, m.count, m.used = self.keys.copy(), self.vals.copy(), self.count, self.used
        return m

    def __contains__(self, id_: object) -> bool:
        return self.get(int(id_)) >= 0  # type: ignore[call-overload]

    def get(self, id_: int) -> int:
        """Slot of id_, or -1 (one id: probed in Python, cheaper than a kernel call and no JIT start-up)."""
        key = int(id_)
        mask = self.keys.shape[0] - 1
        x = key & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        h = (x ^ (x >> 31)) & mask
        keys, vals = self.keys, self.vals
        while True:
            v = int(vals[h])
            if v == EMPTY:
                return -1
            if v != DELETED and int(keys[h]) == key:
                return v
            h = (h + 1) & mask

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ids (-1 where absent)."""
        return lookup(self.keys, self.vals, np.ascontiguousarray(ids, np.int64))

    def _reserve(self, extra: int) -> None:
        """Rehash into a larger table (dropping DELETED entries) when extra inserts would pass MAX_LOAD."""
        if self.used + extra <= MAX_LOAD * self.keys.shape[0]:
            return
        live = self.vals >= 0
        keys, vals = self.keys[live], self.vals[live]
        self.keys = np.zeros(capacity_for(self.count + extra), np.int64)
        self.vals = np.full(self.keys.shape[0], EMPTY, np.int64)
        build(keys, vals, self.keys, self.vals)
        self.used = self.count

    def insert(self, ids: np.ndarray, first_slot: int) -> tuple[int, int]:
        """Map ids[i] -> first_slot + i, all or nothing: (0, -1), or (1, i) when ids[i] is already present, or
        (2, i) when ids[i] repeats an earlier id of the batch."""
        ids = np.ascontiguousarray(ids, np.int64)
        self._reserve(ids.shape[0])
        status, where, reused = insert(self.keys, self.vals, ids, first_slot)
        if status == 0:
            self.count += ids.shape[0]
            self.used += ids.shape[0] - reused
        return int(status), int(where)

    def remove(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Delete ids: (their slots, -1), or (_, i) when ids[i] is unknown and nothing was deleted."""
        slots, where = remove(self.keys, self.vals, np.ascontiguousarray(ids, np.int64))
        if where < 0:
            self.count -= ids.shape[0]
        return slots, int(where)
