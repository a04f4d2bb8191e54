"""The corpus manager: external int64 ids <-> slots, an fp32 master copy, a packed scan tier, tombstones.

The scan tier is what every query reads, so it is packed: int8 with a per-row scale (4x fewer bytes than fp32), or
fp16, or the fp32 master itself; rows are padded to whole 64-byte cache lines. Deletes set a tombstone bit (O(1),
checked in the scan); adds append with amortised doubling; compact() drops tombstoned rows. save/load use one
.npy per array plus a manifest with sizes and checksums, memory-mapped on load."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from recmine.faery import durable
from recmine.faery.kernels import quantize_int8

STORAGES = ("int8", "fp16", "fp32")
FP16_MAX = 65504.0
ARRAYS = ("ids", "live", "master", "packed", "scale", "norms", "sqnorms", "bias")


def padded_dim(dim: int, storage: str) -> int:
    """Row width in elements so a packed row fills whole 64-byte cache lines."""
    per_line = {"int8": 64, "fp16": 32, "fp32": 16}[storage]
    return -(-dim // per_line) * per_line


class Corpus:
    """Rows of an index: slots 0..size-1, some tombstoned; `slot_of` maps live external ids to slots."""

    def __init__(self, dim: int, storage: str = "int8", capacity: int = 1024, l2: bool = False) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.storage = storage
        self.pdim = padded_dim(dim, storage)
        self.size = 0
        self.slot_of: dict[int, int] = {}
        cap = max(1, capacity)
        self.ids = np.empty(cap, np.int64)
        self.live = np.zeros(cap, np.bool_)
        self.master = np.zeros((cap, dim), np.float32)
        ptype = {"int8": np.int8, "fp16": np.uint16, "fp32": np.float32}[storage]  # fp16 kept as raw bits
        self.packed = np.zeros((cap, self.pdim), ptype) if storage != "fp32" else self.master
        self.scale = np.zeros(cap, np.float32)
        self.norms = np.zeros(cap, np.float32)
        self.sqnorms = np.zeros(cap, np.float64)
        self.l2 = l2
        self.bias = np.zeros(cap, np.float32)  # added to every approximate score: -|x|^2 for l2, else 0

    def __len__(self) -> int:
        return len(self.slot_of)

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return int(self.ids.shape[0])

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        new = max(need, 2 * self.capacity)
        for name in ("ids", "live", "scale", "norms", "sqnorms", "bias"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[: self.size] = old[: self.size]
            setattr(self, name, arr)
        master = np.zeros((new, self.dim), np.float32)
        master[: self.size] = self.master[: self.size]
        if self.storage == "fp32":
            self.master = self.packed = master
        else:
            packed = np.zeros((new, self.pdim), self.packed.dtype)
            packed[: self.size] = self.packed[: self.size]
            self.master, self.packed = master, packed

    def _ensure_writable(self) -> None:
        """Arrays loaded memory-mapped read-only are copied to RAM before the first write."""
        for name in ARRAYS:
            arr = getattr(self, name)
            if not arr.flags.writeable:
                setattr(self, name, np.array(arr))
        if self.storage == "fp32":
            self.packed = self.master

    def _encode(self, slots: np.ndarray, x: np.ndarray) -> None:
        self.master[slots] = x
        if self.storage == "int8":
            q, s = quantize_int8(x)
            self.packed[slots, : self.dim] = q
            self.scale[slots] = s
        elif self.storage == "fp16":
            self.packed[slots, : self.dim] = x.astype(np.float16).view(np.uint16)
        x64 = x.astype(np.float64)
        sq = (x64 * x64).sum(axis=1)
        self.sqnorms[slots] = sq
        self.norms[slots] = np.sqrt(sq).astype(np.float32) * np.float32(1.0 + 1e-6)
        self.bias[slots] = (-sq).astype(np.float32) if self.l2 else 0.0

    def check_vectors(self, x: np.ndarray) -> np.ndarray:
        """A (n, dim) float32 copy of x; ValueError naming a wrong shape, NaN/Inf or an fp16 overflow."""
        arr = np.asarray(x)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {np.asarray(x).shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"vectors must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(f"vector {int(np.flatnonzero(bad)[0])} contains NaN or Inf")
        if self.storage == "fp16" and arr.size and np.abs(arr).max() > FP16_MAX:
            raise ValueError(f"fp16 storage cannot hold values beyond ±{FP16_MAX:g}; use int8 or fp32")
        return arr

    def append(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Add rows for new ids (validated by the caller)."""
        self._ensure_writable()
        n = ids.shape[0]
        self._grow(self.size + n)
        slots = np.arange(self.size, self.size + n)
        self.ids[slots] = ids
        self.live[slots] = True
        self._encode(slots, x)
        for i, s in zip(ids.tolist(), slots.tolist(), strict=True):
            self.slot_of[i] = s
        self.size += n

    def overwrite(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Replace the vectors of live ids in place."""
        self._ensure_writable()
        slots = np.fromiter((self.slot_of[i] for i in ids.tolist()), np.int64, count=ids.shape[0])
        self._encode(slots, x)

    def tombstone(self, ids: np.ndarray) -> None:
        """O(1) per id: clear the live bit; the scan skips the row."""
        self._ensure_writable()
        for i in ids.tolist():
            self.live[self.slot_of.pop(i)] = False

    def compact(self) -> None:
        """Drop tombstoned rows so the scan reads only live ones."""
        self._ensure_writable()
        keep = np.flatnonzero(self.live[: self.size])
        for name in ("ids", "live", "scale", "norms", "sqnorms", "bias"):
            arr = getattr(self, name)
            arr[: keep.size] = arr[keep]
        self.master[: keep.size] = self.master[keep]
        if self.storage != "fp32":
            self.packed[: keep.size] = self.packed[keep]
        self.live[keep.size: self.size] = False
        self.size = int(keep.size)
        self.slot_of = {int(i): s for s, i in enumerate(self.ids[: self.size].tolist())}

    def bytes_per_row(self) -> int:
        """Bytes the scan reads per row (packed row + its scale or norm)."""
        return int(self.pdim * self.packed.dtype.itemsize + 4)

    # ---- persistence
    def save(self, directory: str | os.PathLike[str], meta: dict) -> None:
        """Write arrays (trimmed to size) and a manifest with sizes and CRCs: every file fsynced and renamed into
        place, the directory fsynced before the manifest names them and again after it."""
        d = durable.make_dirs(directory)
        files = {}
        for name in ARRAYS:
            if name == "packed" and self.storage == "fp32":
                continue
            arr = np.ascontiguousarray(getattr(self, name)[: self.size])
            path = d / f"{name}.npy"
            # new file, then rename: an index memory-mapping the old one stays valid
            durable.atomic_write(path, lambda fh, arr=arr: np.save(fh, arr), sync_dir=False)
            data = path.read_bytes()
            files[name] = {"bytes": len(data), "crc32": zlib.crc32(data)}
        durable.fsync_dir(d)
        manifest = {**meta, "dim": self.dim, "storage": self.storage, "size": self.size, "files": files,
                    "format": 1}
        text = json.dumps(manifest).encode()
        durable.atomic_write(d / "manifest.json", lambda fh: fh.write(text))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, verify: bool = True) -> tuple[Corpus, dict]:
        """Open a saved corpus (memory-mapped); ValueError naming a missing, truncated or corrupt file."""
        d = Path(directory)
        mf = d / "manifest.json"
        if not mf.exists():
            raise ValueError(f"{d}: not a faery index (no manifest.json)")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{mf}: corrupt manifest ({exc})") from None
        c = cls(manifest["dim"], manifest["storage"], capacity=1, l2=manifest.get("metric") == "l2")
        for name, info in manifest["files"].items():
            path = d / f"{name}.npy"
            if not path.exists():
                raise ValueError(f"{d}: missing {path.name}")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise ValueError(f"{path}: {size} bytes, manifest says {info['bytes']} (truncated or overwritten)")
            if verify and zlib.crc32(path.read_bytes()) != info["crc32"]:
                raise ValueError(f"{path}: checksum mismatch (corrupt file)")
            try:
                arr = np.load(path, mmap_mode="r" if mmap else None)
            except ValueError as exc:
                raise ValueError(f"{path}: unreadable ({exc})") from None
            setattr(c, name, arr)
        if c.storage == "fp32":
            c.packed = c.master
        c.size = int(manifest["size"])
        if c.ids.shape[0] != c.size:
            raise ValueError(f"{d}: ids.npy holds {c.ids.shape[0]} rows, manifest says {c.size}")
        live = np.asarray(c.live)
        c.slot_of = {int(i): s for s, i in enumerate(np.asarray(c.ids).tolist()) if live[s]}
        return c, manifest
