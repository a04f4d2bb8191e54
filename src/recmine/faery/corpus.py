"""The corpus manager: external int64 ids <-> slots, an fp32 master copy, a packed scan tier, tombstones, per-row
integer attributes.

Tiers: the scan tier is what every query reads, so it is packed: int8 with a per-row scale (4x fewer bytes than
fp32), or fp16, or the fp32 master itself; rows are padded to whole 64-byte cache lines. The fp32 master copy is
read only by the exact re-rank (a few candidate rows per query), so it may live on disk (`master_path`, a
memory-mapped file): RAM then holds the scan tier (132 bytes per row at d = 128) plus 21 bytes of row metadata.

Build: rows are validated and encoded in one parallel numba pass straight into the final arrays (no full-size
temporaries), in chunks, so a memory-mapped .npy or an iterator of chunks larger than RAM can be added; arrays
grow by 1.5x. Ids map to slots by binary search while they ascend with the slots (the default ids, and any add of
larger ids: no table at all), else through a numba hash table (`idmap`), built on first need. Deletes set a
tombstone (O(1), checked in the scan); compact() drops tombstoned rows in place.

Persistence (format 2): one .npy per array plus a manifest with sizes and CRC32s. `load` memory-maps every array and
checks sizes only (instant at any size); `verify` checks the checksums. Format-1 directories (which also hold a
sqnorms.npy, ignored) load unchanged."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recmine.faery import durable, kernels, pages
from recmine.faery.idmap import IdMap

STORAGES = ("int8", "fp16", "fp32")
FP16_MAX = 65504.0
ARRAYS = ("ids", "live", "master", "packed", "scale", "norms", "bias")
FORMAT = 2
ATTR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
CHUNK_ROWS = 1 << 16  # rows encoded per kernel call: bounds any temporary (cosine, dtype conversion, fp16)


def padded_dim(dim: int, storage: str) -> int:
    """Row width in elements so a packed row fills whole 64-byte cache lines."""
    per_line = {"int8": 64, "fp16": 32, "fp32": 16}[storage]
    return -(-dim // per_line) * per_line


def _crc32(path: Path, block: int = 16 << 20) -> int:
    """CRC32 of a file read in blocks (never the whole file in memory)."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def check_attr_name(name: Any) -> str:
    """name if it is a valid attribute name (an identifier of at most 64 characters); ValueError otherwise."""
    if not isinstance(name, str) or not ATTR_NAME.match(name):
        raise ValueError(f"attribute names are identifiers of at most 64 characters, got {name!r}")
    return name


class Corpus:
    """Rows of an index: slots 0..size-1, some tombstoned; `idmap` maps live external ids to slots."""

    def __init__(self, dim: int, storage: str = "int8", capacity: int = 0, l2: bool = False,
                 master_path: str | os.PathLike[str] | None = None) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if storage == "int8" and dim > kernels.simd.MAX_INT8_DIM:
            raise ValueError(f"int8 storage holds at most {kernels.simd.MAX_INT8_DIM} dimensions, got {dim}; "
                             f"use fp16 or fp32")
        self.dim = dim
        self.storage = storage
        self.pdim = padded_dim(dim, storage)
        self.l2 = l2
        self.size = 0
        self.n_live = 0
        self.master_path = Path(master_path) if master_path is not None else None
        self._map: IdMap | None = None  # the hash table, once ids stop ascending with the slots
        self._sorted = True  # ids[:size] strictly ascending: ids -> slots by binary search, no table
        self.attrs: dict[str, np.ndarray] = {}
        self._readonly = False
        self._prefetch: Any = None  # the page-mapping thread of a loaded corpus, until a full scan waits for it
        self._alloc(max(0, capacity))

    # ---- allocation
    def _new_master(self, cap: int) -> np.ndarray:
        if self.master_path is None:
            return np.empty((cap, self.dim), np.float32)
        rows = max(cap, 1)
        with open(self.master_path, "ab") as fh:
            fh.truncate(rows * self.dim * 4)  # sparse: untouched rows take no disk and no RAM
        return np.memmap(self.master_path, np.float32, "r+", shape=(rows, self.dim))

    def _alloc(self, cap: int) -> None:
        self.ids = np.empty(cap, np.int64)
        self.live = np.zeros(cap, np.bool_)
        self.scale = np.zeros(cap, np.float32)
        self.norms = np.zeros(cap, np.float32)
        self.bias = np.zeros(cap, np.float32)
        self.master = self._new_master(cap)
        ptype = {"int8": np.int8, "fp16": np.uint16, "fp32": np.float32}[self.storage]  # fp16 kept as raw bits
        self.packed = np.empty((cap, self.pdim), ptype) if self.storage != "fp32" else self.master

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        return self.n_live

    @property
    def idmap(self) -> IdMap:
        """The hash table ids -> slots of the live rows (built on first use: O(size); then kept up to date)."""
        if self._map is None:
            self._map = IdMap.of(np.asarray(self.ids[: self.size]), np.asarray(self.live[: self.size]))
        return self._map

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slots of live ids (-1 for an unknown or deleted id): binary search while the ids ascend, else the
        table."""
        ids = np.ascontiguousarray(ids, np.int64)
        if self._map is not None or not self._sorted:
            return self.idmap.lookup(ids)
        have = self.ids[: self.size]
        pos = np.searchsorted(have, ids)
        inside = pos < self.size
        pos = np.where(inside, pos, 0)
        ok = inside & (np.asarray(have[pos]) == ids) & np.asarray(self.live[pos]) if self.size else inside
        return np.where(ok, pos, -1).astype(np.int64)

    def slot_of(self, id_: int) -> int:
        """Slot of a live id, or -1."""
        if self._map is not None or not self._sorted:
            return self.idmap.get(id_)
        return int(self.slots_of(np.array([id_], np.int64))[0])

    def claim(self, ids: np.ndarray, at: int) -> tuple[int, int]:
        """Reserve ids for staged slots at..: (0, -1), or (1, i) when ids[i] is already live, or (2, i) when it
        repeats an earlier id of the call; nothing changes unless 0. Ids larger than every id so far, ascending,
        keep the binary-search mapping (no table)."""
        if self._map is None and self._sorted:
            last = int(self.ids[self.size - 1]) if self.size else None
            if ids.size == 0 or ((last is None or ids[0] > last) and (ids.size < 2 or bool((ids[1:] > ids[:-1]).all()))):
                return 0, -1
        status, where = self.idmap.insert(ids, at)
        if status == 0:
            self._sorted = False
        return status, where

    def release(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Forget live ids: (their slots, -1), or (_, i) when ids[i] is unknown and nothing changed."""
        if self._map is not None:
            return self._map.remove(ids)
        slots = self.slots_of(ids)
        bad = np.flatnonzero(slots < 0)
        if bad.size:
            return slots, int(bad[0])
        if np.unique(slots).size != slots.size:
            srt = np.sort(ids)
            return slots, int(np.flatnonzero(ids == srt[np.flatnonzero(np.diff(srt) == 0)[0]])[1])
        return slots, -1

    def _grow(self, need: int, used: int | None = None) -> None:
        """Capacity >= need, growing 1.5x (amortised O(1) per row); rows 0..used-1 (default: size; staged rows
        beyond size too when given) are copied by a parallel kernel."""
        if need <= self.capacity:
            return
        self._ensure_writable()
        new = max(need, self.capacity + self.capacity // 2, 1024)
        n = self.size if used is None else used
        for name in ("ids", "live", "scale", "norms", "bias"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[:n] = old[:n]
            setattr(self, name, arr)
        for name, old in list(self.attrs.items()):
            arr = np.zeros(new, np.int64)
            arr[:n] = old[:n]
            self.attrs[name] = arr
        if self.master_path is not None:
            if isinstance(self.master, np.memmap):
                self.master.flush()
            self.master = self._new_master(new)  # the file grows in place: nothing to copy
        else:
            master = np.empty((new, self.dim), np.float32)
            kernels.copy_rows(self.master, master, 0, n)
            self.master = master
        if self.storage == "fp32":
            self.packed = self.master
        else:
            packed = np.empty((new, self.pdim), self.packed.dtype)
            kernels.copy_rows(self.packed, packed, 0, n)
            self.packed = packed

    def _ensure_writable(self) -> None:
        """A loaded corpus is memory-mapped read-only: the first write copies its arrays to RAM (the master to
        `master_path` when one is set), so the saved directory is never modified."""
        if not self._readonly:
            return
        n = self.size
        for name in ("ids", "live", "scale", "norms", "bias"):
            setattr(self, name, np.array(getattr(self, name)))
        self.attrs = {k: np.array(v) for k, v in self.attrs.items()}
        old = self.master
        if self.master_path is not None:
            self.master = self._new_master(n)
            kernels.copy_rows(old, self.master, 0, n)
        else:
            self.master = np.empty((n, self.dim), np.float32)
            kernels.copy_rows(old, self.master, 0, n)
        if self.storage == "fp32":
            self.packed = self.master
        else:
            packed = np.empty((n, self.pdim), self.packed.dtype)
            kernels.copy_rows(self.packed, packed, 0, n)
            self.packed = packed
        self._readonly = False

    def copy(self) -> Corpus:
        """A private, writable in-RAM copy of rows 0..size-1 (ids table included)."""
        n = self.size
        new = Corpus(self.dim, self.storage, capacity=0, l2=self.l2)
        for name in ("ids", "live", "scale", "norms", "bias"):
            setattr(new, name, np.array(getattr(self, name)[:n]))
        new.attrs = {k: np.array(v[:n]) for k, v in self.attrs.items()}
        new.master = np.empty((n, self.dim), np.float32)
        kernels.copy_rows(self.master, new.master, 0, n)
        if self.storage == "fp32":
            new.packed = new.master
        else:
            new.packed = np.empty((n, self.pdim), self.packed.dtype)
            kernels.copy_rows(self.packed, new.packed, 0, n)
        new.size, new.n_live = n, self.n_live
        new._map = self._map.copy() if self._map is not None else None
        new._sorted = self._sorted
        return new

    # ---- validation and encoding
    def check_vectors(self, x: Any) -> np.ndarray:
        """A (n, dim) float32 copy of x; ValueError naming a wrong shape, NaN/Inf or an fp16 overflow. (The build
        path validates inside the encode kernel instead; this is for small inputs.)"""
        arr = self.check_shape(x)
        arr = arr.astype(np.float32)
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(f"vector {int(np.flatnonzero(bad)[0])} contains NaN or Inf")
        if self.storage == "fp16" and arr.size and np.abs(arr).max() > FP16_MAX:
            raise ValueError(f"fp16 storage cannot hold values beyond ±{FP16_MAX:g}; use int8 or fp32")
        return arr

    def check_shape(self, x: Any) -> np.ndarray:
        """x as a 2-D numeric array of width dim (not copied); ValueError naming a wrong shape or dtype."""
        arr = x if isinstance(x, np.ndarray) else np.asarray(x)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {np.shape(x)}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"vectors must be real numbers, got dtype {arr.dtype}")
        return arr

    def stage(self, x: np.ndarray, at: int, offset: int = 0) -> None:
        """Encode rows x into slots at.. (beyond size: nothing is published). ValueError naming the first bad row
        (numbered from `offset`, the rows of the call before this chunk)."""
        self._grow(at + x.shape[0], used=at)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        bad = kernels.encode(x, at, self.master, self.packed, self.scale, self.norms, self.bias,
                             kernels.TIERS[self.storage], self.l2, self.storage == "fp16")
        if bad >= 0:
            row = np.asarray(x[bad], np.float64)
            if np.isfinite(row).all():
                raise ValueError(f"vector {offset + bad}: fp16 storage cannot hold values beyond ±{FP16_MAX:g}; "
                                 f"use int8 or fp32")
            raise ValueError(f"vector {offset + bad} contains NaN or Inf")
        if self.storage == "fp16":
            self.packed[at: at + x.shape[0], : self.dim] = self.master[at: at + x.shape[0]].astype(np.float16).view(
                np.uint16)
            self.packed[at: at + x.shape[0], self.dim:] = 0

    def publish(self, ids: np.ndarray, at: int, attrs: Mapping[str, np.ndarray] | None = None) -> None:
        """Make staged slots at..at+len(ids) live under ids (validated and claimed)."""
        n = ids.shape[0]
        sl = slice(at, at + n)
        self.ids[sl] = ids
        self.live[sl] = True
        for name, col in self.attrs.items():
            col[sl] = 0 if attrs is None or name not in attrs else attrs[name]
        self.size = at + n
        self.n_live += n

    def add_attribute(self, name: str) -> None:
        """A new per-row integer attribute column (0 for every existing row)."""
        check_attr_name(name)
        self._ensure_writable()
        self.attrs[name] = np.zeros(self.capacity, np.int64)

    def set_attributes(self, slots: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Write attribute values of rows (columns must exist)."""
        self._ensure_writable()
        for name, v in values.items():
            self.attrs[name][slots] = v

    def overwrite(self, slots: np.ndarray, x: np.ndarray) -> None:
        """Replace the vectors of live slots in place (x validated by the caller)."""
        self._ensure_writable()
        tmp = Corpus(self.dim, self.storage, capacity=x.shape[0], l2=self.l2)
        tmp.stage(x, 0)
        self.master[slots] = tmp.master[: x.shape[0]]
        if self.storage != "fp32":
            self.packed[slots] = tmp.packed[: x.shape[0]]
        for name in ("scale", "norms", "bias"):
            getattr(self, name)[slots] = getattr(tmp, name)[: x.shape[0]]

    def tombstone(self, slots: np.ndarray) -> None:
        """O(1) per row: clear the live bit; the scan skips the row."""
        self._ensure_writable()
        self.live[slots] = False
        self.n_live -= slots.shape[0]

    def compact(self) -> None:
        """Drop tombstoned rows (in place, rows only move down) so the scan reads only live ones."""
        self._ensure_writable()
        keep = np.flatnonzero(self.live[: self.size])
        m = int(keep.size)
        if m == self.size:
            return
        for name in ("ids", "live", "scale", "norms", "bias"):
            arr = getattr(self, name)
            arr[:m] = arr[keep]
        for arr in self.attrs.values():
            arr[:m] = arr[keep]
        kernels.gather_rows_down(self.master, keep)
        if self.storage != "fp32":
            kernels.gather_rows_down(self.packed, keep)
        self.live[m: self.size] = False
        self.size = m
        self._map = None  # slots moved; order kept, so ascending ids still ascend

    def settle(self) -> None:
        """Wait until the pages a load's `pages.prefetch` left to its thread are mapped: a full scan reads them all,
        and faulting them beside that thread would cost more than waiting."""
        pages.wait(self._prefetch)
        self._prefetch = None

    def bytes_per_row(self) -> int:
        """Bytes the scan reads per row (packed row + its scale or norm)."""
        return int(self.pdim * self.packed.dtype.itemsize + 4)

    def live_mask(self) -> np.ndarray:
        """uint8 view of the live bits of slots 0..size-1 (what the scan reads)."""
        return np.asarray(self.live[: self.size]).view(np.uint8)

    # ---- persistence
    def save(self, directory: str | os.PathLike[str], meta: dict) -> None:
        """Write arrays (trimmed to size) and a manifest with sizes and CRCs: every file fsynced and renamed into
        place, the directory fsynced before the manifest names them and again after it. Large arrays are written
        straight from memory (or from the memory-mapped master), never copied whole."""
        d = durable.make_dirs(directory)
        files = {}
        arrays = {name: getattr(self, name)[: self.size] for name in ARRAYS
                  if not (name == "packed" and self.storage == "fp32")}
        arrays.update({f"attr.{k}": v[: self.size] for k, v in self.attrs.items()})
        idmap = None if self._sorted else self.idmap  # saved whole: a loaded index needs no rebuild
        if idmap is not None:
            arrays.update({"idmap.keys": idmap.keys, "idmap.vals": idmap.vals})
        for name, arr in arrays.items():
            path = d / f"{name}.npy"
            # new file, then rename: an index memory-mapping the old one stays valid
            durable.atomic_write(path, lambda fh, arr=arr: np.save(fh, arr), sync_dir=False)
            files[name] = {"bytes": path.stat().st_size, "crc32": _crc32(path)}
        durable.fsync_dir(d)
        manifest = {**meta, "dim": self.dim, "storage": self.storage, "size": self.size, "live": self.n_live,
                    "attrs": sorted(self.attrs), "ids_sorted": self._sorted, "files": files, "format": FORMAT}
        if idmap is not None:
            manifest["idmap"] = {"count": idmap.count, "used": idmap.used}
        text = json.dumps(manifest).encode()
        durable.atomic_write(d / "manifest.json", lambda fh: fh.write(text))

    @staticmethod
    def read_manifest(directory: str | os.PathLike[str]) -> dict:
        """The manifest of a saved corpus; ValueError when absent, corrupt or from a newer format."""
        d = Path(directory)
        mf = d / "manifest.json"
        if not mf.exists():
            raise ValueError(f"{d}: not a faery index (no manifest.json)")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{mf}: corrupt manifest ({exc})") from None
        if int(manifest.get("format", 1)) > FORMAT:
            raise ValueError(f"{d}: index format {manifest['format']} was written by a newer faery "
                             f"(this one reads formats 1-{FORMAT})")
        return manifest

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True,
             master_path: str | os.PathLike[str] | None = None) -> tuple[Corpus, dict]:
        """Open a saved corpus: every array memory-mapped (nothing is read until used; never written), sizes checked
        against the manifest; ValueError naming a missing or truncated file. Checksums: `verify`. The scan tier's
        pages are mapped (`pages.prefetch`): up to pages.SYNC_SECONDS here, the rest on a thread (`settle`)."""
        d = Path(directory)
        manifest = cls.read_manifest(d)
        c = cls(manifest["dim"], manifest["storage"], capacity=0, l2=manifest.get("metric") == "l2",
                master_path=master_path)
        c.size = int(manifest["size"])
        names = [n for n in manifest["files"] if n != "sqnorms"]  # format 1 also stored sqnorms (unused now)
        tables: dict[str, np.ndarray] = {}
        for name in names:
            info = manifest["files"][name]
            path = d / f"{name}.npy"
            if not path.exists():
                raise ValueError(f"{d}: missing {path.name}")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise ValueError(f"{path}: {size} bytes, manifest says {info['bytes']} (truncated or overwritten)")
            try:
                # copy-on-write mapping: reads share the page cache like "r", but the arrays type like RAM arrays in
                # numba (one compiled kernel for both); the corpus copies before its first write regardless
                arr = np.load(path, mmap_mode="c" if mmap else None)
            except ValueError as exc:
                raise ValueError(f"{path}: unreadable ({exc})") from None
            if name.startswith("idmap."):
                tables[name] = arr
                continue
            if arr.shape[:1] != (c.size,):
                raise ValueError(f"{path}: holds {arr.shape[0] if arr.ndim else 0} rows, manifest says {c.size}")
            if name.startswith("attr."):
                c.attrs[name[5:]] = arr
            else:
                setattr(c, name, arr)
        if c.storage == "fp32":
            c.packed = c.master
        c.n_live = int(manifest["live"]) if "live" in manifest else int(np.count_nonzero(c.live))
        c._map = None
        c._sorted = bool(manifest["ids_sorted"]) if "ids_sorted" in manifest else bool(
            c.size < 2 or (np.diff(np.asarray(c.ids)) > 0).all())  # format 1: look once
        if len(tables) == 2 and "idmap" in manifest:  # writes touch private copies of its pages (mapped "c")
            c._map = IdMap.of_tables(tables["idmap.keys"], tables["idmap.vals"], manifest["idmap"]["count"],
                                     manifest["idmap"]["used"])
        c._readonly = True
        # the scan tier and its row metadata: read-ahead, pages mapped for up to SYNC_SECONDS, the rest on a thread
        c._prefetch = pages.prefetch([c.packed, c.scale, c.norms, c.bias, c.live]) if mmap else None
        return c, manifest

    @staticmethod
    def verify(directory: str | os.PathLike[str]) -> dict[str, int]:
        """Check every file's size and CRC32 against the manifest; {file: bytes}. ValueError naming the first
        missing, truncated or corrupt file."""
        d = Path(directory)
        manifest = Corpus.read_manifest(d)
        checked = {}
        for name, info in manifest["files"].items():
            path = d / f"{name}.npy"
            if not path.exists():
                raise ValueError(f"{d}: missing {path.name}")
            if path.stat().st_size != info["bytes"]:
                raise ValueError(f"{path}: {path.stat().st_size} bytes, manifest says {info['bytes']} "
                                 f"(truncated or overwritten)")
            if _crc32(path) != info["crc32"]:
                raise ValueError(f"{path}: checksum mismatch (corrupt file)")
            checked[path.name] = int(info["bytes"])
        return checked
