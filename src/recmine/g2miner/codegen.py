"""Code generation: SearchPlan -> specialised Python source -> numba kernels, cached by plan.

Each plan becomes a module with two kernels: `count_kernel` (edge-parallel over the first two pattern vertices,
numba prange, count-only last level) and `list_kernel` (serial, resumable, fills a caller's buffer). The module is
written to a cache folder keyed by the plan and the set-operation source, so numba's on-disk cache (cache=True)
means a second process does not recompile."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from recmine.g2miner import setops
from recmine.g2miner.analyzer import SearchPlan
from recmine.g2miner.pattern import WILDCARD

BIG = 2**31 - 1
_lock = threading.Lock()
_loaded: dict[str, CompiledPlan] = {}


@dataclass
class CompiledPlan:
    """A plan's generated source and its compiled kernels."""

    plan: SearchPlan
    source: str
    module: ModuleType
    compile_seconds: float = 0.0
    compiled: bool = False  # both kernels compiled
    _done: set = field(default_factory=set, repr=False)

    def ensure_compiled(self, sample_args_count: tuple | None, sample_args_list: tuple | None) -> float:
        """Compile (or load from numba's cache) the kernels whose argument types are given (None: not needed
        now, so a count never pays for the list kernel); returns the seconds spent here."""
        t = time.perf_counter()
        for kernel, sig in ((self.module.count_kernel, sample_args_count), (self.module.list_kernel, sample_args_list)):
            if sig is not None and kernel not in self._done:
                kernel.compile(sig)
                self._done.add(kernel)
        spent = time.perf_counter() - t
        self.compile_seconds += spent
        self.compiled = len(self._done) == 2
        return spent


def _needs_adjacency(plan: SearchPlan) -> set[int]:
    need = set()
    for lv in plan.levels:
        need.update(lv.connected)
        if plan.induced:
            need.update(lv.disconnected)
    return need


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)


def _emit_bound(w: _Writer, ind: int, i: int, upper: tuple[int, ...]) -> str:
    if not upper:
        return "BIG"
    w(ind, f"ub{i} = v{upper[0]}")
    for j in upper[1:]:
        w(ind, f"if v{j} < ub{i}:")
        w(ind + 1, f"ub{i} = v{j}")
    return f"ub{i}"


def _reusable(plan: SearchPlan, i: int, cands: dict[int, tuple[str, str]]) -> tuple[int, str, str] | None:
    """An earlier level whose materialised candidate set is a superset of level i's: same connected set (so the
    same intersection), a bound no tighter, and (vertex-induced) a subset of level i's subtractions."""
    lv = plan.levels[i]
    for j, (arr, n) in cands.items():
        lj = plan.levels[j]
        if lj.connected == lv.connected and set(lj.upper) <= set(lv.upper) and lj.label == WILDCARD:
            if not plan.induced or set(lj.disconnected) <= set(lv.disconnected):
                return j, arr, n
    return None


def _emit_candidates(w: _Writer, ind: int, plan: SearchPlan, i: int, ub: str,
                     cands: dict[int, tuple[str, str]]) -> tuple[str, str]:
    """Emit code computing level i's candidate set; returns (array expression, length variable)."""
    lv = plan.levels[i]
    subtract = plan.induced and bool(lv.disconnected)
    conn = lv.connected
    reuse = _reusable(plan, i, cands)
    if reuse is not None:
        j, arr, n = reuse
        extra = [d for d in lv.disconnected if d not in plan.levels[j].disconnected] if plan.induced else []
        w(ind, f"n{i} = count_below({arr}[:{n}], {ub})" if ub != "BIG" else f"n{i} = {n}")
        if not extra:
            return arr, f"n{i}"
        w(ind, f"b{i}[:n{i}] = {arr}[:n{i}]")
        for d in extra:
            w(ind, f"n{i} = difference_inplace(b{i}, n{i}, a{d})")
        return f"b{i}", f"n{i}"
    if len(conn) == 1 and not subtract:
        w(ind, f"n{i} = count_below(a{conn[0]}, {ub})")
        return f"a{conn[0]}", f"n{i}"
    if len(conn) == 1:
        w(ind, f"n{i} = copy_below(a{conn[0]}, {ub}, b{i})")
    else:
        w(ind, f"n{i} = intersect(a{conn[0]}, a{conn[1]}, {ub}, b{i})")
        for c in conn[2:]:
            w(ind, f"n{i} = intersect_inplace(b{i}, n{i}, a{c}, {ub})")
    if subtract:
        for d in lv.disconnected:
            w(ind, f"n{i} = difference_inplace(b{i}, n{i}, a{d})")
    return f"b{i}", f"n{i}"


def _emit_filters(w: _Writer, ind: int, plan: SearchPlan, i: int) -> None:
    lv = plan.levels[i]
    excl = [j for j in range(i) if j not in lv.connected and j not in lv.upper]  # v_i < v_j already differs
    if excl:
        w(ind, "if " + " or ".join(f"v{i} == v{j}" for j in excl) + ":")
        w(ind + 1, "continue")
    if lv.label != WILDCARD:
        w(ind, f"if labels[v{i}] != {lv.label}:")
        w(ind + 1, "continue")


def _emit_last_count(w: _Writer, ind: int, plan: SearchPlan, i: int, ub: str,
                     cands: dict[int, tuple[str, str]]) -> None:
    """Count-only last level: no materialisation where the set algebra allows it."""
    lv = plan.levels[i]
    subtract = plan.induced and bool(lv.disconnected)
    conn = lv.connected
    reuse = _reusable(plan, i, cands)
    if reuse is not None:
        j, arr, n = reuse
        extra = [d for d in lv.disconnected if d not in plan.levels[j].disconnected] if plan.induced else []
        w(ind, f"n{i} = count_below({arr}[:{n}], {ub})" if ub != "BIG" else f"n{i} = {n}")
        if not extra:
            w(ind, f"cnt = n{i}")
        elif len(extra) == 1:
            w(ind, f"cnt = difference_count({arr}, n{i}, a{extra[0]})")
        else:
            w(ind, f"b{i}[:n{i}] = {arr}[:n{i}]")
            for d in extra[:-1]:
                w(ind, f"n{i} = difference_inplace(b{i}, n{i}, a{d})")
            w(ind, f"cnt = difference_count(b{i}, n{i}, a{extra[-1]})")
    elif len(conn) == 1 and not subtract:
        w(ind, f"cnt = count_below(a{conn[0]}, {ub})")
    elif len(conn) == 2 and not subtract:
        w(ind, f"cnt = intersect_count(a{conn[0]}, a{conn[1]}, {ub})")
    elif not subtract:
        w(ind, f"n{i} = intersect(a{conn[0]}, a{conn[1]}, {ub}, b{i})")
        for c in conn[2:-1]:
            w(ind, f"n{i} = intersect_inplace(b{i}, n{i}, a{c}, {ub})")
        w(ind, f"cnt = intersect_count(b{i}[:n{i}], a{conn[-1]}, {ub})")
    else:
        if len(conn) == 1:
            w(ind, f"n{i} = copy_below(a{conn[0]}, {ub}, b{i})")
        else:
            w(ind, f"n{i} = intersect(a{conn[0]}, a{conn[1]}, {ub}, b{i})")
            for c in conn[2:]:
                w(ind, f"n{i} = intersect_inplace(b{i}, n{i}, a{c}, {ub})")
        for d in lv.disconnected[:-1]:
            w(ind, f"n{i} = difference_inplace(b{i}, n{i}, a{d})")
        w(ind, f"cnt = difference_count(b{i}, n{i}, a{lv.disconnected[-1]})")
    # earlier vertices that are not neighbours may sit in the candidate set: they are not valid matches
    for j in (j for j in range(i) if j not in conn and j not in lv.upper):
        cond = [f"v{j} < {ub}"] if ub != "BIG" else []
        cond += [f"contains(a{c}, v{j})" for c in conn]
        if subtract:
            cond += [f"not contains(a{d}, v{j})" for d in lv.disconnected]
        w(ind, "if " + " and ".join(cond) + ":")
        w(ind + 1, "cnt -= 1")
    w(ind, "local += cnt")


def _emit_generic(w: _Writer, plan: SearchPlan, ind: int, i: int, need: set[int], mode: str,
                  cands: dict[int, tuple[str, str]] | None = None) -> None:
    cands = dict(cands or {})
    k = len(plan.levels)
    lv = plan.levels[i]
    last = i == k - 1
    ub = _emit_bound(w, ind, i, lv.upper)
    if last and mode == "count" and lv.label == WILDCARD and plan.label_alternatives is None:
        _emit_last_count(w, ind, plan, i, ub, cands)
        return
    arr, n = _emit_candidates(w, ind, plan, i, ub, cands)
    if arr.startswith("b"):
        cands[i] = (arr, n)
    w(ind, f"for k{i} in range({n}):")
    w(ind + 1, f"v{i} = {arr}[k{i}]")
    _emit_filters(w, ind + 1, plan, i)
    if last:
        _emit_match(w, ind + 1, plan, mode)
        return
    if i in need:
        w(ind + 1, f"a{i} = indices[indptr[v{i}]:indptr[v{i} + 1]]")
    _emit_generic(w, plan, ind + 1, i + 1, need, mode, cands)


def _emit_clique(w: _Writer, plan: SearchPlan, ind: int, i: int, mode: str) -> None:
    """k-clique on the degree-ranked graph: candidates of level i are candidates of level i-1 below v(i-1) that are
    also neighbours of v(i-1) — the oriented-DAG algorithm, one intersection per level."""
    k = len(plan.levels)
    prev = "a0" if i == 2 else f"b{i - 1}[:k{i - 1}]"
    last = i == k - 1
    if last and mode == "count":
        w(ind, f"local += intersect_count({prev}, a{i - 1}, v{i - 1})")
        return
    w(ind, f"n{i} = intersect({prev}, a{i - 1}, v{i - 1}, b{i})")
    w(ind, f"for k{i} in range(n{i}):")
    w(ind + 1, f"v{i} = b{i}[k{i}]")
    if last:
        _emit_match(w, ind + 1, plan, mode)
        return
    w(ind + 1, f"a{i} = indices[indptr[v{i}]:indptr[v{i} + 1]]")
    _emit_clique(w, plan, ind + 1, i + 1, mode)


def _emit_match(w: _Writer, ind: int, plan: SearchPlan, mode: str) -> None:
    """A full candidate match: keep it if the labels fit one placement (wildcard patterns), then count it or
    write it, each column holding the graph vertex of that pattern vertex under the placement that fits."""
    placements: tuple[tuple[int, ...], ...] = (tuple(lv.vertex for lv in plan.levels),)
    if plan.label_alternatives is not None and plan.label_placements is not None:
        alts = [" and ".join(f"labels[v{i}] == {lab}" for i, lab in alt) or "True" for alt in plan.label_alternatives]
        placements = plan.label_placements
        if mode == "count":
            w(ind, "if " + " or ".join(f"({a})" for a in alts) + ":")
            ind += 1
        else:
            w(ind, "fit = -1")
            for a, cond in enumerate(alts):
                w(ind, f"{'if' if a == 0 else 'elif'} {cond}:")
                w(ind + 1, f"fit = {a}")
            w(ind, "if fit >= 0:")
            ind += 1
    if mode == "count":
        w(ind, "local += 1")
        return
    w(ind, "if seen >= skip_now:")
    w(ind + 1, "if nout == cap:")
    w(ind + 2, "return t, seen, nout")
    for a, cols in enumerate(placements):
        if len(placements) > 1:
            w(ind + 1, f"{'if' if a == 0 else 'elif'} fit == {a}:")
        for i, col in enumerate(cols):
            w(ind + 1 + (len(placements) > 1), f"out[nout, {col}] = v{i}")
    w(ind + 1, "nout += 1")
    w(ind, "seen += 1")


def generate_source(plan: SearchPlan) -> str:
    """The Python source of the plan's kernels (what `recmine mine count --show-code` prints)."""
    k = len(plan.levels)
    need = _needs_adjacency(plan) | {0, 1}
    head = [
        f'"""Generated by recmine.g2miner.codegen for {plan.pattern.text()!r} '
        f'({"vertex" if plan.induced else "edge"}-induced, {plan.kind} kernel). Do not edit."""',
        "import numpy as np",
        "from numba import njit, prange",
        "from recmine.g2miner.setops import (contains, copy_below, count_below, difference_count,",
        "                                    difference_inplace, intersect, intersect_count, intersect_inplace)",
        "",
        f"BIG = {BIG}",
        "",
        "",
    ]
    w = _Writer()
    # ---- count kernel
    w(0, "@njit(cache=True, nogil=True, parallel=True)")
    w(0, "def count_kernel(indptr, indices, labels, esrc, tasks, nchunks, maxdeg):")
    w(1, "partial = np.zeros(nchunks, np.int64)")
    w(1, "ntasks = tasks.shape[0]")
    w(1, "for c in prange(nchunks):")
    for i in range(2, k):
        w(2, f"b{i} = np.empty(maxdeg, np.int32)")
    w(2, "local = 0")
    w(2, "for t in range(c, ntasks, nchunks):")
    _emit_task_head(w, 3)
    if k == 2:
        _emit_match(w, 3, plan, "count")  # the label check of wildcard patterns happens here, as for any k
    elif plan.kind == "clique":
        _emit_clique(w, plan, 3, 2, "count")
    else:
        _emit_generic(w, plan, 3, 2, need, "count")
    w(2, "partial[c] = local")
    w(1, "return partial.sum()")
    w(0, "")
    w(0, "")
    # ---- list kernel
    w(0, "@njit(cache=True, nogil=True)")
    w(0, "def list_kernel(indptr, indices, labels, esrc, tasks, t0, skip, out, maxdeg):")
    w(1, "cap = out.shape[0]")
    w(1, "nout = 0")
    for i in range(2, k):
        w(1, f"b{i} = np.empty(maxdeg, np.int32)")
    w(1, "for t in range(t0, tasks.shape[0]):")
    w(2, "skip_now = skip if t == t0 else 0")
    w(2, "seen = 0")
    _emit_task_head(w, 2)
    if k == 2:
        _emit_match(w, 2, plan, "list")
    elif plan.kind == "clique":
        _emit_clique(w, plan, 2, 2, "list")
    else:
        _emit_generic(w, plan, 2, 2, need, "list")
    w(1, "return tasks.shape[0], 0, nout")
    return "\n".join(head + w.lines) + "\n"


def _emit_task_head(w: _Writer, ind: int) -> None:
    w(ind, "e = tasks[t]")
    w(ind, "v0 = esrc[e]")
    w(ind, "v1 = indices[e]")
    w(ind, "a0 = indices[indptr[v0]:indptr[v0 + 1]]")
    w(ind, "a1 = indices[indptr[v1]:indptr[v1 + 1]]")


def _cache_dir() -> Path:
    base = os.environ.get("RECMINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "recmine"
    )
    return Path(base) / "g2miner_kernels"


def compile_plan(plan: SearchPlan) -> CompiledPlan:
    """Generate (once per plan) the kernel module and import it; numba compiles lazily on first call."""
    source = generate_source(plan)
    setops_src = Path(setops.__file__).read_bytes()
    digest = hashlib.sha256(source.encode() + setops_src).hexdigest()[:20]
    with _lock:
        if digest in _loaded:
            return _loaded[digest]
        d = _cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"g2k_{digest}.py"
        if not path.exists() or path.read_text() != source:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(source)
            os.replace(tmp, path)
        name = f"recmine_g2k_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        compiled = CompiledPlan(plan, source, module)
        _loaded[digest] = compiled
        return compiled
