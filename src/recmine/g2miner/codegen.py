"""Code generation: SearchPlan -> specialised Python source -> numba kernels, cached by plan structure.

Each plan becomes a module with three serial, GIL-free kernels over a range [lo, hi) of CSR slots (start edges
v0 -> v1): `count_range` (count-only last level), `vertex_range` (per-vertex counts) and `list_range` (resumable,
fills a caller's buffer). The runtime runs ranges on its own threads (dynamic scheduling, exact int64 sums). Vertex
labels and label alternatives are arrays passed in, so one compiled kernel serves every labeling of a pattern
structure. The module is written to a cache folder keyed by its source and the set-operation source, so numba's
on-disk cache (cache=True) means a second process does not recompile."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numba

from recmine.g2miner import setops
from recmine.g2miner.analyzer import SearchPlan
from recmine.g2miner.pattern import Pattern

BIG = 2**31 - 1
_lock = threading.Lock()
_loaded: dict[str, tuple[ModuleType, set]] = {}  # digest -> (module, names of the kernels compiled so far)


@dataclass
class CompiledPlan:
    """A plan with its generated source and kernel module (shared by every plan of the same structure: labels are
    runtime data); compile_seconds is what compiling or loading kernels cost through this object."""

    plan: SearchPlan
    source: str
    module: ModuleType
    compile_seconds: float = 0.0
    _done: set = field(default_factory=set, repr=False)

    def kernel(self, name: str, args: tuple) -> Callable:
        """The kernel `name` ("count_range", "vertex_range" or "list_range"), compiled (or loaded from numba's
        cache) for the types of `args` on first use; only the kernels a caller needs are ever compiled."""
        fn = getattr(self.module, name)
        if name not in self._done:
            with _lock:
                t = time.perf_counter()
                fn.compile(tuple(numba.typeof(a) for a in args))
                self.compile_seconds += time.perf_counter() - t
                self._done.add(name)
        return fn


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
        if lj.connected == lv.connected and set(lj.upper) <= set(lv.upper):  # sets are label-free
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
    _emit_label_check(w, ind, plan, i)


def _emit_label_check(w: _Writer, ind: int, plan: SearchPlan, i: int) -> None:
    """Labeled plans: skip a vertex whose label no placement allows at this level (runtime data)."""
    if plan.labeled:
        w(ind, f"if not label_ok(labels[v{i}], lab_val, lab_ptr[{i}], lab_ptr[{i + 1}]):")
        w(ind + 1, "continue")


def _emit_last_count(w: _Writer, ind: int, plan: SearchPlan, i: int, ub: str,
                     cands: dict[int, tuple[str, str]]) -> None:
    """Count-only level i (the last, or the first of a closed-form tail of m levels: C(count, m) matches): no
    materialisation where the set algebra allows it."""
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
    m = len(plan.levels) - i
    w(ind, "local += cnt" if m == 1 else f"local += choose(cnt, {m})")


def _emit_generic(w: _Writer, plan: SearchPlan, ind: int, i: int, need: set[int], mode: str,
                  cands: dict[int, tuple[str, str]] | None = None) -> None:
    cands = dict(cands or {})
    k = len(plan.levels)
    lv = plan.levels[i]
    last = i == k - 1
    ub = _emit_bound(w, ind, i, lv.upper)
    if mode == "count" and not plan.labeled and i == k - plan.closed_tail:
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
    """k-clique on the degree-oriented graph (ids are degree ranks, out-neighbours have smaller ids): candidates of
    level i are the candidates of level i-1 that precede v(i-1) (hence below it) and are out-neighbours of v(i-1);
    one plain merge per level (DAG rows are short: probing lost to merging there), no bounds, each clique once
    (GraphMiner's DAG algorithm)."""
    k = len(plan.levels)
    prev = "a0[:e1 - indptr[v0]]" if i == 2 else f"b{i - 1}[:k{i - 1}]"
    last = i == k - 1
    if last and mode == "count":
        w(ind, f"local += merge_count({prev}, a{i - 1})")
        return
    w(ind, f"n{i} = merge_intersect({prev}, a{i - 1}, b{i})")
    w(ind, f"for k{i} in range(n{i}):")
    w(ind + 1, f"v{i} = b{i}[k{i}]")
    if last:
        _emit_match(w, ind + 1, plan, mode)
        return
    w(ind + 1, f"a{i} = indices[indptr[v{i}]:indptr[v{i} + 1]]")
    _emit_clique(w, plan, ind + 1, i + 1, mode)


def _emit_match(w: _Writer, ind: int, plan: SearchPlan, mode: str) -> None:
    """A full candidate match: keep it if its labels fit one placement (labeled patterns: the alternatives are
    runtime data), then count it, credit its vertices, or write it (column = pattern vertex, in the placement that
    fits)."""
    k = len(plan.levels)
    if plan.labeled:
        fits = " and ".join(f"(alts[q, {i}] < 0 or labels[v{i}] == alts[q, {i}])" for i in range(k))
        w(ind, "fit = -1")
        w(ind, "for q in range(alts.shape[0]):")
        w(ind + 1, f"if {fits}:")
        w(ind + 2, "fit = q")
        w(ind + 2, "break")
        w(ind, "if fit >= 0:")
        ind += 1
    if mode == "count":
        w(ind, "local += 1")
        return
    if mode == "vertex":
        for i in range(k):
            w(ind, f"pv[v{i}] += 1")
        w(ind, "local += 1")
        return
    w(ind, "if seen >= skip_now:")
    w(ind + 1, "if nout == cap:")
    w(ind + 2, "return e1, seen, nout")
    for i, lv in enumerate(plan.levels):
        col = f"place[fit, {i}]" if plan.labeled else str(lv.vertex)
        w(ind + 1, f"out[nout, {col}] = v{i}")
    w(ind + 1, "nout += 1")
    w(ind, "seen += 1")


ARGS = "indptr, indices, labels, lab_ptr, lab_val, alts, place, lo, hi, maxdeg"


def _emit_kernel(w: _Writer, plan: SearchPlan, mode: str) -> None:
    """One kernel over the start edges in CSR slots [lo, hi): walk the rows they fall in, then the search levels."""
    k = len(plan.levels)
    name, extra = {"count": ("count_range", ""), "vertex": ("vertex_range", ", pv"),
                   "list": ("list_range", ", skip, out")}[mode]
    w(0, "@njit(cache=True, nogil=True)")
    w(0, f"def {name}({ARGS}{extra}):")
    if mode == "list":
        w(1, "cap = out.shape[0]")
        w(1, "nout = 0")
    w(1, "local = 0")
    for i in range(2, k):
        w(1, f"b{i} = np.empty(maxdeg, np.int32)")
    w(1, "v0 = row_of(indptr, lo)")
    w(1, "e = lo")
    w(1, "while e < hi:")
    w(2, "while indptr[v0 + 1] <= e:")
    w(3, "v0 += 1")
    w(2, "first = e")
    w(2, "stop = indptr[v0 + 1]")
    w(2, "if stop > hi:")
    w(3, "stop = hi")
    w(2, "e = stop")
    _emit_label_check(w, 2, plan, 0)
    w(2, "a0 = indices[indptr[v0]:indptr[v0 + 1]]")
    if plan.kind != "clique" and 0 in plan.levels[1].upper:  # v1 < v0: a prefix of the sorted row
        w(2, "lim = indptr[v0] + count_below(a0, v0)")
        w(2, "if lim < stop:")
        w(3, "stop = lim")
    w(2, "for e1 in range(first, stop):")
    if mode == "list":
        w(3, "skip_now = skip if e1 == lo else 0")
        w(3, "seen = 0")
    w(3, "v1 = indices[e1]")
    _emit_label_check(w, 3, plan, 1)
    if k == 2:
        _emit_match(w, 3, plan, mode)  # the label check of labeled patterns happens here, as for any k
    else:
        w(3, "a1 = indices[indptr[v1]:indptr[v1 + 1]]")
        if plan.kind == "clique":
            _emit_clique(w, plan, 3, 2, mode)
        else:
            _emit_generic(w, plan, 3, 2, _needs_adjacency(plan) | {0, 1}, mode)
    w(1, "return (hi, 0, nout)" if mode == "list" else "return local")
    w(0, "")
    w(0, "")


def generate_source(plan: SearchPlan) -> str:
    """The Python source of the plan's kernels (what `recmine mine count --show-code` prints)."""
    graph = "degree-oriented graph" if plan.kind == "clique" else "degree-ranked graph"
    head = [
        f'"""Generated by recmine.g2miner.codegen for {Pattern(plan.pattern.num_vertices, plan.pattern.edges).text()!r} '
        f'({"vertex" if plan.induced else "edge"}-induced, {plan.kind} kernel on the {graph}'
        f'{", labels as runtime data" if plan.labeled else ""}). Do not edit."""',
        "import numpy as np",
        "from numba import njit",
        "from recmine.g2miner.setops import (contains, copy_below, count_below, difference_count,",
        "                                    choose, difference_inplace, intersect, intersect_count, intersect_inplace,",
        "                                    label_ok, merge_count, merge_intersect, row_of)",
        "",
        f"BIG = {BIG}",
        "",
        "",
    ]
    w = _Writer()
    for mode in ("count", "vertex", "list"):
        _emit_kernel(w, plan, mode)
    return "\n".join(head + w.lines).rstrip() + "\n"


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
            module, done = _loaded[digest]
            return CompiledPlan(plan, source, module, _done=done)
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
        done: set = set()
        _loaded[digest] = (module, done)
        return CompiledPlan(plan, source, module, _done=done)
