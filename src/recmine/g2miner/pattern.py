"""Patterns: small connected (optionally vertex-labeled) graphs, their text form and the builtin catalogue."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

MAX_PATTERN_VERTICES = 8
WILDCARD = -1


@dataclass(frozen=True)
class Pattern:
    """A connected pattern graph on vertices 0..n-1 (n ≤ 8); `labels[i] == -1` is a wildcard."""

    num_vertices: int
    edges: tuple[tuple[int, int], ...]
    labels: tuple[int, ...] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        n = self.num_vertices
        if not 2 <= n <= MAX_PATTERN_VERTICES:
            raise ValueError(f"a pattern needs 2..{MAX_PATTERN_VERTICES} vertices, got {n}")
        norm = set()
        for u, v in self.edges:
            if not (0 <= u < n and 0 <= v < n):
                raise ValueError(f"pattern edge {u}-{v} names a vertex outside 0..{n - 1}")
            if u == v:
                raise ValueError(f"pattern edge {u}-{v} is a self loop")
            norm.add((min(u, v), max(u, v)))
        object.__setattr__(self, "edges", tuple(sorted(norm)))
        if self.labels is not None:
            if len(self.labels) != n:
                raise ValueError(f"pattern has {n} vertices but {len(self.labels)} labels")
            object.__setattr__(self, "labels", tuple(int(x) for x in self.labels))
            if all(lab == WILDCARD for lab in self.labels):
                object.__setattr__(self, "labels", None)
        if not self._connected():
            raise ValueError(f"pattern {self.text()!r} is not connected")

    @classmethod
    def from_edges(cls, edges: list[tuple[int, int]] | tuple[tuple[int, int], ...], labels=None, name=None) -> Pattern:
        """Pattern from an edge list; vertices are 0..max id."""
        edges = tuple((int(u), int(v)) for u, v in edges)
        if not edges:
            raise ValueError("a pattern needs at least one edge")
        n = max(max(e) for e in edges) + 1
        return cls(n, edges, tuple(labels) if labels is not None else None, name)

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Parse the text form: edges `"0-1 1-2 2-0"`, optionally `| 0:5 1:3` vertex labels (others wildcard)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty pattern string")
        body, _, lab_part = text.partition("|")
        edges = []
        for tok in body.replace(",", " ").split():
            a, sep, b = tok.partition("-")
            if not sep or not a.strip().isdigit() or not b.strip().isdigit():
                raise ValueError(f"cannot parse pattern edge {tok!r} in {text!r} (expected like '0-1')")
            edges.append((int(a), int(b)))
        if not edges:
            raise ValueError(f"pattern string {text!r} has no edges")
        n = max(max(e) for e in edges) + 1
        if n > MAX_PATTERN_VERTICES:
            raise ValueError(f"pattern {text!r} has {n} vertices; at most {MAX_PATTERN_VERTICES} are supported")
        labels = None
        if lab_part.strip():
            labels = [WILDCARD] * n
            for tok in lab_part.replace(",", " ").split():
                v, sep, lab = tok.partition(":")
                if not sep or not v.isdigit() or not lab.lstrip("-").isdigit():
                    raise ValueError(f"cannot parse pattern label {tok!r} in {text!r} (expected like '0:5')")
                if int(v) >= n:
                    raise ValueError(f"label for vertex {v} but the pattern has vertices 0..{n - 1}")
                labels[int(v)] = int(lab)
        return cls(n, tuple(edges), tuple(labels) if labels else None)

    def text(self) -> str:
        """The text form accepted by `parse`."""
        s = " ".join(f"{u}-{v}" for u, v in self.edges)
        if self.labels is not None:
            s += " | " + " ".join(f"{i}:{lab}" for i, lab in enumerate(self.labels) if lab != WILDCARD)
        return s

    def __str__(self) -> str:
        return self.text()

    @property
    def num_edges(self) -> int:
        """Number of pattern edges."""
        return len(self.edges)

    def adjacency(self) -> list[set[int]]:
        """Neighbour sets of the pattern's vertices."""
        adj: list[set[int]] = [set() for _ in range(self.num_vertices)]
        for u, v in self.edges:
            adj[u].add(v)
            adj[v].add(u)
        return adj

    def is_clique(self) -> bool:
        """True for the complete graph on its vertices."""
        n = self.num_vertices
        return self.num_edges == n * (n - 1) // 2

    def _connected(self) -> bool:
        adj = self.adjacency()
        seen = {0}
        stack = [0]
        while stack:
            for w in adj[stack.pop()]:
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return len(seen) == self.num_vertices

    def canonical(self) -> tuple:
        """A label invariant under vertex renumbering (min over permutations; fine for ≤ 8 vertices)."""
        n = self.num_vertices
        best = None
        labs = self.labels or (WILDCARD,) * n
        for perm in itertools.permutations(range(n)):
            key = (
                tuple(labs[perm.index(i)] for i in range(n)),
                tuple(sorted((min(perm[u], perm[v]), max(perm[u], perm[v])) for u, v in self.edges)),
            )
            if best is None or key < best:
                best = key
        return best


def _clique(k: int) -> Pattern:
    return Pattern.from_edges(list(itertools.combinations(range(k), 2)), name=f"{k}-clique")


def _cycle(k: int) -> Pattern:
    return Pattern.from_edges([(i, (i + 1) % k) for i in range(k)], name=f"{k}-cycle")


def _path(k: int) -> Pattern:
    return Pattern.from_edges([(i, i + 1) for i in range(k - 1)], name=f"{k}-path")


def _star(k: int) -> Pattern:
    return Pattern.from_edges([(0, i) for i in range(1, k + 1)], name=f"{k}-star")


_BUILDERS = {
    "edge": lambda: Pattern.from_edges([(0, 1)], name="edge"),
    "wedge": lambda: Pattern.from_edges([(0, 1), (1, 2)], name="wedge"),
    "3-path": lambda: Pattern.from_edges([(0, 1), (1, 2)], name="wedge"),
    "triangle": lambda: Pattern.from_edges([(0, 1), (1, 2), (0, 2)], name="triangle"),
    "diamond": lambda: Pattern.from_edges([(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)], name="diamond"),
    "tailed-triangle": lambda: Pattern.from_edges([(0, 1), (1, 2), (0, 2), (2, 3)], name="tailed-triangle"),
    "3-star": lambda: _star(3),
    "4-path": lambda: _path(4),
    "house": lambda: Pattern.from_edges([(0, 1), (1, 2), (2, 3), (3, 0), (2, 4), (3, 4)], name="house"),
}
for _k in range(3, 9):
    _BUILDERS[f"{_k}-clique"] = lambda k=_k: _clique(k)
    _BUILDERS[f"clique{_k}"] = lambda k=_k: _clique(k)
for _k in range(4, 7):
    _BUILDERS[f"{_k}-cycle"] = lambda k=_k: _cycle(k)
_ALIASES = {"tailed_triangle": "tailed-triangle", "3star": "3-star", "4path": "4-path", "4cycle": "4-cycle",
            "square": "4-cycle", "rectangle": "4-cycle", "star": "3-star"}

BUILTINS: tuple[str, ...] = tuple(sorted(_BUILDERS))


def get_pattern(spec: str | Pattern) -> Pattern:
    """A builtin pattern by name (see BUILTINS), or a pattern parsed from its text form."""
    if isinstance(spec, Pattern):
        return spec
    key = spec.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _BUILDERS:
        return _BUILDERS[key]()
    if not re.fullmatch(r"[\d\s,|:-]+", key):
        raise ValueError(f"unknown builtin pattern {spec!r}; known: {', '.join(BUILTINS)}")
    return Pattern.parse(spec)


def connected_motifs(k: int) -> list[Pattern]:
    """All connected k-vertex graphs (k = 3, 4, 5), one representative per isomorphism class."""
    if not 2 <= k <= 5:
        raise ValueError(f"motif size must be 3..5, got {k}")
    pairs = list(itertools.combinations(range(k), 2))
    seen: dict[tuple, Pattern] = {}
    for mask in range(1, 1 << len(pairs)):
        edges = [pairs[i] for i in range(len(pairs)) if mask >> i & 1]
        if len({v for e in edges for v in e}) != k:
            continue
        try:
            p = Pattern(k, tuple(edges))
        except ValueError:
            continue
        key = p.canonical()
        if key not in seen:
            seen[key] = p
    out = sorted(seen.values(), key=lambda p: (p.num_edges, p.canonical()))
    names = {3: {2: "wedge", 3: "triangle"}}
    named = []
    for p in out:
        nm = _motif_name(p) or names.get(k, {}).get(p.num_edges)
        named.append(Pattern(p.num_vertices, p.edges, None, nm))
    return named


def _motif_name(p: Pattern) -> str | None:
    for name in ("wedge", "triangle", "3-star", "4-path", "tailed-triangle", "4-cycle", "diamond", "4-clique",
                 "5-clique", "5-cycle", "house"):
        q = _BUILDERS[name]()
        if q.num_vertices == p.num_vertices and q.num_edges == p.num_edges and q.canonical() == p.canonical():
            return q.name
    return None
