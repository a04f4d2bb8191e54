"""Compressed rows for WAN rounds: fp16 or int8 (one float32 scale per row), sent as deltas with error feedback.

A sender that tracks what each asker holds (the SLO-aware scheduler's mirror) sends a changed row as the quantised
difference between the new value and the value the asker holds (DELTA), the asker adds it to its row. What the
quantisation loses stays in the difference between the sender's value and the asker's, so it rides along with the
next send of that key (error feedback: the residual is never dropped, nothing drifts). A key the asker does not hold
(or may not hold as the sender believes, after a round was cut) goes as a quantised absolute row (ABS). A change
smaller than `significance` times the row's typical norm is not sent at all (it stays in the residual), unless the
key has been quiet for `settle_s`: then whatever residual is left goes as the exact float32 row (RAW), so once the
stream stops and the link clears every replica holds the exact value.

Versions: a row the asker holds only approximately carries origin `~o` (= -1 - o) instead of its origin `o`, so
the exact row of the same version (ts, o) wins last-writer-wins over it everywhere, and a round that leaves any row
inexact is reported incomplete, so the asker's version vector never claims a version it holds only approximately.
Both sides decode with the same float32 arithmetic (`dequantize`), so the sender knows the asker's value bit for
bit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmine.ekko.ps.store import TableUpdate

ROW_OVERHEAD = 20  # key + ts + origin bytes per row on the wire (values come on top)
BASE_BYTES = 8  # a delta row names the version it applies to
CODECS = {"fp32": 0, "fp16": 1, "int8": 2}  # wire ids
RAW, ABS, DELTA = 0, 1, 2  # how a row travels: exact float32, quantised absolute, quantised difference
FP16_MAX = 65504.0


def inexact(origin: np.ndarray) -> np.ndarray:
    """The origin an approximate copy of a version is stored under (~o, below every real origin)."""
    return ~np.asarray(origin, np.int32)


@dataclass(frozen=True)
class Codec:
    """How a sender compresses rows: `kind` fp16 or int8; changes below `significance` (relative to the row's norm)
    wait in the residual until the key has been quiet for `settle_s` seconds, then go exact."""

    kind: str = "int8"
    significance: float = 0.05
    settle_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("fp16", "int8"):
            raise ValueError(f"unknown codec {self.kind!r}; choose fp16 or int8")
        if not (np.isfinite(self.significance) and self.significance >= 0):
            raise ValueError(f"significance must be finite and >= 0, got {self.significance}")
        if not (np.isfinite(self.settle_s) and self.settle_s >= 0):
            raise ValueError(f"settle_s must be finite and >= 0, got {self.settle_s}")

    @property
    def id(self) -> int:
        """Wire id of the codec."""
        return CODECS[self.kind]

    def cost(self, dim: int, how: np.ndarray) -> np.ndarray:
        """Wire bytes of each row, by how it travels (RAW / ABS / DELTA)."""
        quant = dim * (2 if self.kind == "fp16" else 1) + (4 if self.kind == "int8" else 0)
        return np.where(how == RAW, ROW_OVERHEAD + 4 * dim,
                        ROW_OVERHEAD + quant + np.where(how == DELTA, BASE_BYTES, 0)).astype(np.int64)

    def quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, per-row scale): int8 codes with scale max|row| / 127, or fp16 values (scale 1)."""
        x = np.asarray(x, np.float32)
        if self.kind == "fp16":
            return x.astype(np.float16), np.ones(x.shape[0], np.float32)
        scale = (np.abs(x).max(axis=1) / np.float32(127.0)).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
        return q, scale


def dequantize(codec: int, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Codes -> float32 values; the one decoding both sender and receiver use (bit-identical results)."""
    if codec == CODECS["fp16"]:
        return np.asarray(q, np.float16).astype(np.float32)
    if codec == CODECS["int8"]:
        return np.asarray(q, np.int8).astype(np.float32) * np.asarray(scale, np.float32)[:, None]
    raise ValueError(f"unknown codec id {codec}; known: {sorted(CODECS.values())}")


@dataclass
class PackedUpdate(TableUpdate):
    """Quantised rows of one table: `values` is what the asker will hold after applying them (the sender's mirror
    records it); `base_ts` is the version each DELTA row applies to (0: an ABS row); `codes` and `scale` travel."""

    codec: int = 0
    base_ts: np.ndarray | None = None
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None

    def nbytes(self) -> int:
        """Bytes on the wire (keys, versions, bases, codes, scales)."""
        assert self.codes is not None and self.base_ts is not None and self.scale is not None
        return int(self.keys.nbytes + self.ts.nbytes + self.origin.nbytes + self.codes.nbytes
                   + (self.scale.nbytes if self.codec == CODECS["int8"] else 0)
                   + BASE_BYTES * int((self.base_ts != 0).sum()))

    def take(self, idx: np.ndarray) -> PackedUpdate:
        """The subset of rows at positions idx."""
        assert self.codes is not None and self.base_ts is not None and self.scale is not None
        return PackedUpdate(self.table, self.keys[idx], self.values[idx], self.ts[idx], self.origin[idx], self.codec,
                            self.base_ts[idx], self.codes[idx], self.scale[idx])


def encode(codec: Codec, up: TableUpdate, how: np.ndarray, held: np.ndarray, held_ts: np.ndarray
           ) -> list[TableUpdate]:
    """Rows of `up` as they travel: RAW rows as they are, ABS rows quantised, DELTA rows as the quantised
    difference from `held` (the asker's value at version `held_ts`). A quantised row whose code overflows or whose
    decoded value is not finite goes RAW. Returns up to two updates (RAW, packed)."""
    how = np.asarray(how).copy()
    target = np.asarray(up.values, np.float32)
    base = np.where((how == DELTA)[:, None], held, np.float32(0.0)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        diff = target - base
        ok = np.isfinite(diff).all(axis=1)
        if codec.kind == "fp16":
            ok &= (np.abs(diff) <= FP16_MAX).all(axis=1)
        how[~ok] = RAW
        q, scale = codec.quantize(np.where(ok[:, None], diff, 0.0))
        decoded = base + dequantize(codec.id, q, scale)
    bad = (how != RAW) & ~np.isfinite(decoded).all(axis=1)
    how[bad] = RAW
    out: list[TableUpdate] = []
    raw = np.flatnonzero(how == RAW)
    if raw.size:
        out.append(up.take(raw))
    sel = np.flatnonzero(how != RAW)
    if sel.size:
        exact = (decoded[sel] == target[sel]).all(axis=1)
        origin = np.where(exact, up.origin[sel], inexact(up.origin[sel])).astype(np.int32)
        base_ts = np.where(how[sel] == DELTA, held_ts[sel], 0).astype(np.int64)
        out.append(PackedUpdate(up.table, up.keys[sel], decoded[sel], up.ts[sel], origin, codec.id, base_ts,
                                q[sel], scale[sel]))
    return out


def decode(table: str, keys: np.ndarray, ts: np.ndarray, origin: np.ndarray, codec: int, codes: np.ndarray,
           scale: np.ndarray, base_ts: np.ndarray, held: object) -> TableUpdate:
    """Packed rows -> the rows to apply, DELTA rows added to what `held` (a store: `.versions`, `.get`) holds. A
    DELTA whose base version is not the one held is dropped when the held version already wins last-writer-wins
    over it, and raises ValueError otherwise (the sender then resends the row absolute)."""
    keys = np.asarray(keys, np.int64)
    values = dequantize(codec, codes, scale)
    based = np.flatnonzero(base_ts != 0)
    keep = np.ones(keys.shape[0], bool)
    if based.size:
        h_ts, h_origin = held.versions(table, keys[based])  # type: ignore[attr-defined]
        h_vals = held.get(table, keys[based])[0]  # type: ignore[attr-defined]
        wrong = h_ts != base_ts[based]
        if wrong.any():
            newer = (h_ts > ts[based]) | ((h_ts == ts[based]) & (h_origin > origin[based]))
            stale = wrong & ~newer
            if stale.any():
                j = int(np.flatnonzero(stale)[0])
                raise ValueError(f"table {table!r}: compressed delta for key {int(keys[based][j])} applies to version "
                                 f"{int(base_ts[based][j])}, this store holds version {int(h_ts[j])}")
            keep[based[wrong]] = False
        values[based] = h_vals + values[based]
    if not np.isfinite(values).all():
        raise ValueError(f"table {table!r}: non-finite value (NaN/Inf) in decoded rows")
    return TableUpdate(table, keys[keep], values[keep], np.asarray(ts, np.int64)[keep],
                       np.asarray(origin, np.int32)[keep])


def unpack(up: TableUpdate, held: object) -> TableUpdate:
    """Rows handed over in memory (no wire, e.g. between servers sharing a process): packed rows decoded against
    `held` exactly as the wire's receiver decodes them (`wire.pb_to_rows`), other rows as they are."""
    if not isinstance(up, PackedUpdate):
        return up
    assert up.codes is not None and up.scale is not None and up.base_ts is not None
    return decode(up.table, up.keys, up.ts, up.origin, up.codec, up.codes, up.scale, up.base_ts, held)


def parse_scheduler(spec: str) -> tuple[str, Codec | None]:
    """'slo', 'fifo', 'slo+int8', 'fifo+fp16@0.1' (significance after @) -> (policy name, codec or None)."""
    policy, _, comp = spec.partition("+")
    if not comp:
        return policy, None
    kind, _, sig = comp.partition("@")
    try:
        significance = float(sig) if sig else Codec.significance
    except ValueError:
        raise ValueError(f"scheduler {spec!r}: significance after '@' must be a number") from None
    return policy, Codec(kind, significance)
