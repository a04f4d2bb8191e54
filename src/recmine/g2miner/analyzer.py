"""Pattern analysis: automorphisms, symmetry-breaking partial order, matching order, and the SearchPlan.

Symmetry breaking follows GraphZero/G2Miner: walk the matching order, and for the first vertex v whose orbit under
the current group is non-trivial, require id(u) < id(v) for every other u in that orbit, then continue with v's
stabiliser. Every match is then found exactly once (|Aut| embeddings collapse to one)."""

from __future__ import annotations

from dataclasses import dataclass

from recmine.g2miner.pattern import WILDCARD, Pattern


@dataclass(frozen=True)
class Level:
    """How to extend a partial match by pattern vertex `vertex` (the level-th in matching order).

    connected: earlier levels adjacent to it (intersect their neighbour sets);
    disconnected: earlier levels not adjacent (subtract their neighbour sets when vertex-induced; always distinct);
    upper: earlier levels whose matched id bounds this one from above (symmetry breaking)."""

    vertex: int
    connected: tuple[int, ...]
    disconnected: tuple[int, ...]
    upper: tuple[int, ...]
    label: int


@dataclass(frozen=True)
class SearchPlan:
    """Everything the code generator needs: matching order, per-level set operations and bounds."""

    pattern: Pattern
    induced: bool
    order: tuple[int, ...]
    levels: tuple[Level, ...]
    num_automorphisms: int
    constraints: tuple[tuple[int, int], ...]  # (a, b): id(a) < id(b), pattern vertices
    kind: str  # "clique" (dedicated kernel on the degree-oriented graph) or "generic"
    # Labeled patterns: symmetry breaking uses the unlabeled group, so each subgraph is found once, and a found match
    # is kept when its labels fit one placement of the pattern on it. The labels are runtime data of the kernel (one
    # compiled kernel serves every labeling of a pattern structure): per alternative the (level, label) pairs it needs,
    label_alternatives: tuple[tuple[tuple[int, int], ...], ...] | None = None
    # per alternative, the pattern vertex each level plays in that placement (a listed match is written so)
    label_placements: tuple[tuple[int, ...], ...] | None = None
    # per level, the labels some alternative allows there (empty: any label); prunes the search early
    label_allow: tuple[tuple[int, ...], ...] | None = None
    # counting: the last `closed_tail` levels are counted in closed form, C(n, closed_tail) with n the valid
    # candidates of the first of them (1: only the last level is counted, by its set size); see closed_tail()
    closed_tail: int = 1

    @property
    def labeled(self) -> bool:
        """True when the kernel checks vertex labels (runtime data, not part of the generated code)."""
        return self.label_alternatives is not None

    def key(self) -> str:
        """Stable text identifying the generated code: the pattern structure, never its labels (runtime data)."""
        lv = ";".join(f"{lv_.vertex}:{lv_.connected}:{lv_.disconnected}:{lv_.upper}" for lv_ in self.levels)
        return f"{self.kind}|{int(self.induced)}|{int(self.labeled)}|{self.closed_tail}|{lv}"

    def describe(self) -> str:
        """Human-readable plan: one line per level."""
        lines = [f"pattern {self.pattern.text()} ({'vertex' if self.induced else 'edge'}-induced), "
                 f"|Aut| = {self.num_automorphisms}, kernel = {self.kind}"]
        for i, lv in enumerate(self.levels):
            ops = " ∩ ".join(f"N(v{j})" for j in lv.connected) or "all vertices"
            if self.induced and lv.disconnected:
                ops += " − " + " − ".join(f"N(v{j})" for j in lv.disconnected)
            bound = f", v{i} < " + ", ".join(f"v{j}" for j in lv.upper) if lv.upper else ""
            allow = self.label_allow[i] if self.label_allow is not None else ()
            lab = f", label in {{{', '.join(map(str, allow))}}}" if allow else ""
            lines.append(f"  v{i} = pattern vertex {lv.vertex}: {ops}{bound}{lab}")
        if self.closed_tail > 1:
            first = len(self.levels) - self.closed_tail
            lines.append(f"  count: v{first}..v{len(self.levels) - 1} are any {self.closed_tail} of v{first}'s candidates "
                         f"(one order each): C(n, {self.closed_tail}) per match of v0..v{first - 1}")
        if self.label_alternatives is not None:
            alts = " | ".join(" ".join(f"v{i}:{lab}" for i, lab in alt) for alt in self.label_alternatives)
            lines.append(f"  keep a match when its labels fit one placement: {alts}")
        return "\n".join(lines)


def automorphisms(p: Pattern) -> list[tuple[int, ...]]:
    """All label-preserving automorphisms of p (backtracking over vertex images)."""
    n = p.num_vertices
    adj = p.adjacency()
    labels = p.labels or (WILDCARD,) * n
    deg = [len(a) for a in adj]
    result: list[tuple[int, ...]] = []
    img = [-1] * n
    used = [False] * n

    def extend(v: int) -> None:
        if v == n:
            result.append(tuple(img))
            return
        for w in range(n):
            if used[w] or deg[w] != deg[v] or labels[w] != labels[v]:
                continue
            if all((img[u] in adj[w]) == (u in adj[v]) for u in range(v)):
                img[v] = w
                used[w] = True
                extend(v + 1)
                used[w] = False
        img[v] = -1

    extend(0)
    return result


def matching_order(p: Pattern) -> tuple[int, ...]:
    """Connected prefix, most constrained first: start at the highest-degree vertex, then repeatedly take the vertex
    with most edges into the prefix (ties: higher degree, then smaller id)."""
    adj = p.adjacency()
    n = p.num_vertices
    start = max(range(n), key=lambda v: (len(adj[v]), -v))
    order = [start]
    while len(order) < n:
        chosen = set(order)
        cand = [v for v in range(n) if v not in chosen and adj[v] & chosen]
        nxt = max(cand, key=lambda v: (len(adj[v] & chosen), len(adj[v]), -v))
        order.append(nxt)
    return tuple(order)


def symmetry_constraints(p: Pattern, order: tuple[int, ...],
                         group: list[tuple[int, ...]] | None = None) -> list[tuple[int, int]]:
    """Partial order (a, b) meaning id(a) < id(b) that keeps exactly one of each match's |Aut| embeddings."""
    group = automorphisms(p) if group is None else group
    constraints: list[tuple[int, int]] = []
    for v in order:
        orbit = {g[v] for g in group}
        if len(orbit) > 1:
            constraints.extend((u, v) for u in sorted(orbit) if u != v)
            group = [g for g in group if g[v] == v]
    return constraints


def closed_tail(levels: tuple[Level, ...] | list[Level], induced: bool, labeled: bool) -> int:
    """How many trailing levels a count takes in closed form: the longest tail v_f..v_last (f >= 2) drawing from one
    candidate set (same connected levels, edge-induced, unlabeled) whose only constraints among themselves chain
    them v_f > v_f+1 > ... > v_last, each level's bound being exactly its predecessor (every other bound of it
    provably above that). Each m-subset of v_f's valid candidates is then exactly one match, so the tail counts
    C(n, m) without enumerating it. Vertex-induced tails would also need non-adjacency among themselves."""
    if induced or labeled:
        return 1
    above: list[set[int]] = []  # above[l]: levels whose matched id is provably greater than level l's
    for lv in levels:
        s = set(lv.upper)
        for u in lv.upper:
            s |= above[u]
        above.append(s)
    k = len(levels)
    m = 1
    for j in range(k - 1, 2, -1):
        lv, prev = levels[j], levels[j - 1]
        if lv.connected != prev.connected or j - 1 not in lv.upper or not set(lv.upper) - {j - 1} <= above[j - 1]:
            break
        m += 1
    return m


def analyze(p: Pattern, induced: bool = True) -> SearchPlan:
    """Build the SearchPlan for counting/listing `p` (vertex-induced when `induced`, else edge-induced)."""
    order = matching_order(p)
    pos = {v: i for i, v in enumerate(order)}
    adj = p.adjacency()
    group = automorphisms(p)
    alternatives = placements = allow = None
    level_label: dict[int, int] = {}
    if p.labels is not None:
        # each subgraph is found once under the unlabeled symmetry; keep it if some placement fits the labels
        plain = automorphisms(Pattern(p.num_vertices, p.edges))
        group = plain
        # placement s: level pos[v] plays pattern vertex s[v], so it must carry that vertex's label
        alts: dict[tuple[tuple[int, int], ...], tuple[int, ...]] = {}
        for s in plain:
            need = tuple(sorted((pos[v], p.labels[s[v]]) for v in range(p.num_vertices)
                                if p.labels[s[v]] != WILDCARD))
            alts.setdefault(need, tuple(s[v] for v in order))
        alternatives = tuple(sorted(alts))
        placements = tuple(alts[a] for a in alternatives)
        per_level: list[set[int] | None] = [set() for _ in order]
        for alt in alternatives:
            fixed = dict(alt)
            for i in range(len(order)):
                if i not in fixed:
                    per_level[i] = None  # some placement leaves this level free
                elif per_level[i] is not None:
                    per_level[i].add(fixed[i])  # type: ignore[union-attr]
        allow = tuple(tuple(sorted(x)) if x is not None else () for x in per_level)
        level_label = {v: (p.labels[v] if len({p.labels[s[v]] for s in plain}) == 1 else WILDCARD)
                       for v in range(p.num_vertices)}
    constraints = symmetry_constraints(p, order, group)
    levels = []
    for i, v in enumerate(order):
        conn = tuple(sorted(pos[u] for u in adj[v] if pos[u] < i))
        disc = tuple(j for j in range(i) if j not in conn)
        upper = []
        for a, b in constraints:
            if a == v and pos[b] < i:
                upper.append(pos[b])
            elif b == v and pos[a] < i:  # cannot happen with the orbit construction; kept as a guard
                raise AssertionError("symmetry constraint points the wrong way")
        levels.append(Level(v, conn, disc, tuple(sorted(upper)), level_label.get(v, WILDCARD)))
    kind = "clique" if p.is_clique() and p.labels is None else "generic"
    tail = closed_tail(levels, induced, alternatives is not None) if kind == "generic" else 1
    return SearchPlan(p, induced, order, tuple(levels), len(group), tuple(constraints), kind, alternatives,
                      placements, allow, tail)
