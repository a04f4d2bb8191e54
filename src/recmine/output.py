"""Result printing shared by every CLI family: one JSON object with --json, a rich table otherwise."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _plain(value: Any) -> Any:
    """Turn numpy scalars/arrays and other containers into JSON-ready Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def rows_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    """A rich table with one row per mapping; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if _numeric_column(rows, col) else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(col, "")) for col in columns))
    return table


def _numeric_column(rows: Sequence[Mapping[str, Any]], col: str) -> bool:
    vals = [r[col] for r in rows if col in r]
    return bool(vals) and all(isinstance(_plain(v), (int, float)) and not isinstance(v, bool) for v in vals)


def emit(result: Mapping[str, Any], *, as_json: bool, title: str) -> None:
    """Print `result` as one JSON object (as_json) or as rich tables: scalars in a key/value table,
    each list of mappings in a table of its own."""
    if as_json:
        print(json.dumps(_plain(result)))
        return
    scalars = {k: v for k, v in result.items() if not _is_rows(v)}
    if scalars:
        table = Table(title=title, show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", justify="right")
        for key, value in scalars.items():
            table.add_row(key, _cell(value))
        console.print(table)
    for key, value in result.items():
        if _is_rows(value):
            console.print(rows_table(value, title=f"{title}: {key}" if scalars else title))


def _is_rows(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)
