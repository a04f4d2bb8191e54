"""recmine.g2miner: pattern-aware graph mining (pattern analyzer -> generated numba kernel -> parallel DFS)."""

from recmine.g2miner.analyzer import SearchPlan, analyze, automorphisms
from recmine.g2miner.graph import CSRGraph, load_graph, load_labels, save_graph
from recmine.g2miner.pattern import BUILTINS, Pattern, connected_motifs, get_pattern
from recmine.g2miner.runtime import (
    CountResult,
    compile_for,
    count,
    count_detailed,
    count_tasks,
    list_matches,
    task_space,
)

__all__ = [
    "BUILTINS", "CSRGraph", "CountResult", "Pattern", "SearchPlan", "analyze", "automorphisms", "compile_for",
    "connected_motifs", "count", "count_detailed", "count_tasks", "get_pattern", "list_matches", "load_graph",
    "load_labels", "save_graph", "task_space",
]
