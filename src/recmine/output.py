"""Result printing shared by every CLI family and the demo: one JSON object with --json (full precision), a rich
table otherwise, laid out to fit the terminal.

In tables, measured quantities get 3 significant digits and a unit read from the key's suffix (`_ns`, `_us`,
`_ms`, `_s`/`_seconds` as time, scaled per column to ns/µs/ms/s; `_bytes`, `_mbps`, `_qps`, `_pct`; `x_...`,
`speedup...` and `a/b` as ratios "12.3x"); counts stay exact integers with thousands separators. A table too
wide for the terminal wraps its text, then is transposed when it has few rows or split into several tables that
each repeat the first (label) column; no cell is ever cut short.

Example::

    >>> from rich.console import Console
    >>> c = Console(width=80, record=True)
    >>> c.print(rows_table([{"pattern": "triangle", "count": 49267, "ours_s": 0.0026912}]))
    >>> "49,267" in c.export_text() and "2.69 ms" in c.export_text()
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

__all__ = ["Column", "RowsTable", "console", "emit", "err_console", "fmt_number", "format_columns", "format_value",
           "layout", "rows_table"]

console = Console()
err_console = Console(stderr=True)

_TIME = {"_ns": 1e-9, "_us": 1e-6, "_ms": 1e-3, "_s": 1.0, "_sec": 1.0, "_secs": 1.0, "_seconds": 1.0}
_TIME_UNITS = ((1e-6, 1e-9, "ns"), (1e-3, 1e-6, "µs"), (1.0, 1e-3, "ms"), (math.inf, 1.0, "s"))
_SUFFIX_UNITS = {"_bytes": "B", "_mbps": "Mb/s", "_gbps": "Gb/s", "_qps": "q/s", "_per_s": "/s", "_pct": "%",
                 "_percent": "%", "_mb": "MB", "_gb": "GB"}


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


def fmt_number(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant digits, without exponents for everyday magnitudes:
    0.018438 -> "0.0184", 14.7141 -> "14.7", 1234567.0 -> "1,230,000", 2.0 -> "2.00"."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    value = float(f"{value:.{digits - 1}e}")  # round first: 9.996 -> 10.0 has one more integer digit
    mag = math.floor(math.log10(abs(value)))
    if mag >= digits - 1:  # no fractional digits left: round the integer part
        return f"{round(value, digits - 1 - mag):,.0f}"
    if mag < -4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits - 1 - mag}f}"


def _unit_of(key: str) -> tuple[str, float, str]:
    """(kind, scale to the base unit, display unit) read from a key: ("time", 1e-3, "") for `p50_ms`."""
    k = key.lower()
    if k in ("seconds", "time_s"):
        return "time", 1.0, ""
    for suffix, scale in _TIME.items():
        if k.endswith(suffix):
            return "time", scale, ""
    for suffix, unit in _SUFFIX_UNITS.items():
        if k.endswith(suffix) or k == suffix[1:]:
            return "unit", 1.0, unit
    if k.startswith("x_") or k.endswith("_x") or "speedup" in k or "/" in k:  # "faiss/ours": a ratio
        return "ratio", 1.0, "x"
    return "", 1.0, ""


def _header(key: str) -> str:
    """Column header for a key: unit suffix dropped (the cells carry it), underscores as spaces (wrap points)."""
    k = key
    kind, _, _ = _unit_of(key)
    low = key.lower()
    if kind in ("time", "unit"):
        for suffix in (*_TIME, *_SUFFIX_UNITS):
            if low.endswith(suffix) and len(low) > len(suffix):
                k = key[: -len(suffix)]
                break
        else:
            k = "time" if kind == "time" else key
    elif kind == "ratio" and low.startswith("x_"):
        k = "vs_" + key[2:]
    return k.replace("_", " ").strip() or key


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _time_scale(values: Sequence[float]) -> tuple[float, str]:
    """The display unit for seconds values: chosen by their median magnitude so a column reads in one unit."""
    mags = [abs(v) for v in values if v and math.isfinite(v)]
    mid = float(np.median(mags)) if mags else 1.0
    for upper, scale, unit in _TIME_UNITS:
        if mid < upper:
            return scale, unit
    return 1.0, "s"  # pragma: no cover - the last bound is inf


def _value_formatter(key: str, values: Sequence[Any]) -> Callable[[Any], str]:
    """A cell formatter for one column (or one key): exact ints, 3 significant digits plus unit for floats."""
    kind, scale, unit = _unit_of(key)
    if kind == "time":
        disp, unit = _time_scale([float(v) * scale for v in values if _is_num(v)])
        factor = scale / disp
    else:
        factor = 1.0

    def fmt(value: Any) -> str:
        value = _plain(value)
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            n = round(value * factor) if factor != 1.0 and float(value * factor).is_integer() else None
            if factor == 1.0 or n is not None:
                s = f"{n if n is not None else value:,}"
            else:
                s = fmt_number(value * factor)
        elif isinstance(value, float):
            s = fmt_number(value * factor)
        elif isinstance(value, Mapping):
            return ", ".join(f"{k}={_value_formatter(str(k), [v])(v)}" for k, v in value.items())
        elif isinstance(value, list):
            if len(value) > 6 or any(isinstance(v, (list, Mapping)) for v in value):
                return f"[{len(value):,} values]"
            return ", ".join(_value_formatter(key, value)(v) for v in value)
        else:
            return str(value)
        if not unit:
            return s
        return f"{s}{unit}" if unit in ("x", "%") else f"{s} {unit}"
    return fmt


def format_value(key: str, value: Any) -> str:
    """One value as a table shows it, its unit read from `key` (see the module docstring)."""
    return _value_formatter(key, [_plain(value)])(value)


@dataclass
class Column:
    """One formatted column: header, cell strings, and whether it holds numbers (right-aligned, never wrapped)."""

    key: str
    header: str
    cells: list[str]
    numeric: bool

    def natural(self) -> int:
        """Width that shows every cell and the header on one line."""
        return max([cell_len(self.header), *(cell_len(c) for c in self.cells)])

    def minimum(self) -> int:
        """Narrowest width without breaking a word (numbers never break)."""
        words = [cell_len(w) for w in self.header.split()] or [1]
        if self.numeric:
            return max([max(words), *(cell_len(c) for c in self.cells)])
        return max([max(words), *(cell_len(w) for c in self.cells for w in c.split())])


def format_columns(rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """Format a list of row mappings: columns are the union of keys in first-seen order; series (lists of more
    than a few values, arrays) are left out of tables (they live in the JSON)."""
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    cols = []
    for key in keys:
        vals = [_plain(r[key]) for r in rows if key in r]
        fmt = _value_formatter(key, vals)
        numeric = bool(vals) and all(_is_num(v) or v is None for v in vals)
        cols.append(Column(key, _header(key), [fmt(_plain(r[key])) if key in r else "" for r in rows], numeric))
    return cols


def _overhead(n_cols: int) -> int:
    """Characters a rich table with edges and padding 1 adds around `n_cols` columns."""
    return 3 * n_cols + 1


def _fit(cols: list[Column], width: int) -> list[int] | None:
    """Column widths that fit `width` (wrapping text where needed), or None when even the minimum is too wide."""
    room = width - _overhead(len(cols))
    mins = [c.minimum() for c in cols]
    nats = [c.natural() for c in cols]
    if sum(mins) > room:
        return None
    widths = list(mins)
    spare = room - sum(widths)
    for i in sorted(range(len(cols)), key=lambda j: nats[j] - mins[j]):  # unwrap the cheapest columns first
        give = min(spare, nats[i] - widths[i])
        widths[i] += give
        spare -= give
    return widths


def _transpose(cols: list[Column]) -> list[Column]:
    """Fields as rows, one column per original row (headed by its label, the first column's cell; the first
    column's header heads the field names)."""
    n = len(cols[0].cells)
    heads = [cols[0].cells[r] for r in range(n)] if n > 1 else ["value"]
    src = cols[1:] if n > 1 else cols
    out = [Column("field", cols[0].header if n > 1 else "field", [c.header for c in src], False)]
    for r in range(n):
        cells = [c.cells[r] for c in src]
        short = all(c.count(" ") <= 1 for c in cells)  # numbers with units, yes/no: right-aligned, unbroken
        out.append(Column(heads[r], heads[r], cells, short))
    return out


def layout(cols: list[Column], width: int) -> list[tuple[list[Column], list[int]]]:
    """Split (or transpose) formatted columns into parts that each fit `width` characters: [(columns, widths)].

    One part when the columns fit (text wrapped at spaces if needed); a table of at most 3 rows that does not fit
    is transposed if that fits; otherwise columns are packed greedily into parts, each repeating column 0."""
    if not cols:
        return []
    widths = _fit(cols, width)
    if widths is not None:
        return [(cols, widths)]
    if len(cols[0].cells) <= 3:
        tcols = _transpose(cols)
        widths = _fit(tcols, width)
        if widths is not None:
            return [(tcols, widths)]
    label, rest = cols[0], cols[1:]
    parts: list[list[Column]] = []
    cur: list[Column] = []
    for c in rest:
        if cur and _fit([label, *cur, c], width) is None:
            parts.append(cur)
            cur = []
        cur.append(c)
    if cur:
        parts.append(cur)
    out = []
    for p in parts:
        pc = [label, *p]
        w = _fit(pc, width)
        if w is None:  # one column wider than the terminal on its own: it folds
            room = max(width - _overhead(len(pc)), len(pc))
            w = [min(c.minimum(), max(room // len(pc), 1)) for c in pc]
        out.append((pc, w))
    return out


class RowsTable:
    """A rich renderable of row mappings that lays itself out for the width it is printed at (`layout`)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], title: str | None = None) -> None:
        self.rows = list(rows)
        self.title = title
        self.columns = format_columns(self.rows)

    def tables(self, width: int) -> list[Table]:
        """The rich tables this renders as at `width` characters."""
        parts = layout(self.columns, width)
        out = []
        for n, (cols, widths) in enumerate(parts):
            title = self.title
            if title and len(parts) > 1:
                title = f"{title} ({n + 1}/{len(parts)})"
            t = Table(title=title)
            for c, w in zip(cols, widths, strict=True):
                t.add_column(c.header, justify="right" if c.numeric else "left", width=w, overflow="fold")
            for r in range(len(cols[0].cells)):
                t.add_row(*(c.cells[r] for c in cols))
            out.append(t)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.tables(options.max_width)


def rows_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> RowsTable:
    """A table with one row per mapping (columns: the union of keys in first-seen order) that fits the width it
    is printed at; print it with `console.print`."""
    return RowsTable(rows, title)


def _flatten(result: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in result.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _facts_table(facts: Mapping[str, Any], title: str) -> RowsTable:
    """A key/value table of scalar facts, each value formatted by its own key."""
    tab = RowsTable([], title)
    keys = list(facts)
    cells = [format_value(k.rsplit(".", 1)[-1], v) for k, v in facts.items()]
    tab.columns = [Column("key", "key", keys, False),
                   Column("value", "value", cells, all(_is_num(_plain(v)) for v in facts.values()))]
    return tab


def emit(result: Mapping[str, Any], *, as_json: bool, title: str) -> None:
    """Print `result` as one JSON object (as_json) or as rich tables: scalars (nested mappings flattened to
    dotted keys) in a key/value table, each list of mappings in a table of its own."""
    if as_json:
        print(json.dumps(_plain(result)))
        return
    scalars = dict(_flatten({k: v for k, v in result.items() if not _is_rows(v)}))
    if scalars:
        console.print(_facts_table(scalars, title))
    for key, value in result.items():
        if _is_rows(value):
            console.print(rows_table(value, title=f"{title}: {key}" if scalars else title))


def _is_rows(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)
