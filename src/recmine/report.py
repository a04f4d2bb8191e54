"""The demo's report: one self-contained `report.html` (inline CSS, matplotlib PNGs as base64 data URIs,
no network) and the raw `results.json` beside it.

`results` is the dict `recmine.demo.run_demo` returns: a `meta` mapping and one mapping per section
(`ekko`, `faery`, `g2miner`). Each section may carry `error` or `skipped` (a message shown instead of plots),
scalar facts (shown as a key/value table), lists of row mappings (shown as tables), and the series the plots use:

- `ekko.latency`: ``[{"dc": str, "t_s": [...], "latency_s": [...]}]`` and `ekko.rollback`
  ``{"injected_at_s", "detected_at_s", "rolled_back_at_s"}`` (optionally "trainer_fixed_at_s", "released_at_s");
  optional `ekko.quality` ``{"t_s": [...], "live": [...], "metric": str}`` with any of the comparison series
  "popularity", "stale", "baseline"; optional `ekko.scale`: the simulator's rows (`lab.sim.scale_rows`: "dcs",
  "floor_s", "<mode>_p50_s", "<mode>_p99_s", "<mode>_origin_nic_util");
- `faery.latency_vs_k`: ``[{"k": int, "ours_ms": float, "faiss_ms": float | None, "numpy_ms": float}]``;
- `g2miner.patterns`: ``[{"pattern": str, "count": int, "ours_s": float, "networkx_s": float, ...}]``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recmine.extras import require

require("matplotlib", "report").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recmine.output import format_columns, format_value, layout  # noqa: E402

__all__ = ["write_report", "render_html", "to_jsonable"]

SECTIONS = [
    ("ekko", "ekko: model updates across data centres",
     "A 4-DC parameter-server cluster behind an emulated WAN. The recommender trains on a drifting click "
     "stream; every update spreads peer to peer; its served AUC is shown beside a popularity ranking and the "
     "stale warm-start checkpoint. Partway, the trainer turns faulty and keeps sending harmful updates until an "
     "operator fixes it: ekko's state manager acts on every alarm (false ones counted), rolls the damage back in "
     "every DC and quarantines the trainer (its updates held, judged in shadow, released when healthy)."),
    ("faery", "faery: exact top-K retrieval over the live item table",
     "The item-embedding table read from one DC's parameter servers becomes a faery index, refreshed as "
     "updates arrive; user queries retrieve exact top-K candidates. Latency beside Faiss's flat index."),
    ("g2miner", "g2miner: dense patterns in the co-interaction graph",
     "The user-user co-interaction graph, with planted fake-engagement rings, mined for triangles and "
     "4-cliques (the shape of such rings). Counts and time beside networkx."),
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d3557;color:#fff;padding:24px 40px}header h1{margin:0 0 6px 0;font-size:28px}
header p{margin:0;opacity:.85}main{max-width:1100px;margin:0 auto;padding:20px 40px 60px}
section{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:20px 26px;margin:22px 0}
h2{margin-top:0;color:#1d3557}p.lead{color:#444}
table{border-collapse:collapse;margin:10px 0 16px;font-size:14px}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 12px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}.scroll{overflow-x:auto}
img{max-width:100%;display:block;margin:12px auto;border:1px solid #e3e6ea;border-radius:6px}
.err{background:#fff3f3;border-left:4px solid #c0392b;padding:10px 14px;white-space:pre-wrap;font-family:monospace}
.skip{background:#fffbea;border-left:4px solid #d4a017;padding:10px 14px}
footer{color:#777;font-size:13px;text-align:center;margin-top:30px}
"""


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, tuples, Paths and non-finite floats -> plain JSON values (NaN/Inf -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) else None


def plot_ekko(sec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Update latency per DC over time (rollback marked) and, if present, live vs baseline quality."""
    out: list[tuple[str, str]] = []
    series = sec.get("latency") or []
    if series:
        fig, ax = plt.subplots(figsize=(9.5, 4.2))
        for s in series:
            t = np.asarray(s.get("t_s", []), dtype=float)
            y = np.asarray(s.get("latency_s", []), dtype=float) * 1e3
            if t.size:
                ax.plot(t, y, ".-", ms=3, lw=1, label=str(s.get("dc")))
        _mark_rollback(ax, sec.get("rollback") or {})
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("update latency to DC (ms)")
        ax.set_title("ekko: per-DC update latency (trainer Put -> visible at the DC)")
        ax.grid(alpha=.3)
        ax.legend(fontsize=8, ncol=3)
        out.append(("Update latency per data centre", _png(fig)))
    q = sec.get("quality") or {}
    if q.get("t_s"):
        fig, ax = plt.subplots(figsize=(9.5, 3.8))
        ax.plot(q["t_s"], q.get("live", []), "-", lw=1.6, label=q.get("live_label", "live model (served)"))
        for key, label, style in (("stale", "stale model (frozen at the warm start)", "-."),
                                  ("popularity", "popularity baseline", "--"), ("baseline", "baseline", ":")):
            if q.get(key):
                ax.plot(q["t_s"], q[key], style, lw=1.2, label=q.get(f"{key}_label", label))
        rb = sec.get("rollback") or {}
        _mark_rollback(ax, rb)
        lo, hi = _num(rb.get("rolled_back_at_s")), _num(rb.get("released_at_s"))
        if lo is not None:
            ax.axvspan(lo, hi if hi is not None else max(q["t_s"]), color="#2e8b57", alpha=.08,
                       label="trainer quarantined (updates held)")
        metric = str(q.get("metric", "quality"))
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel(metric.split(" (")[0])
        ax.set_title(f"ekko: serving quality, harmful update and rollback\n{metric}", fontsize=10)
        ax.grid(alpha=.3)
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        out.append(("Serving quality", _png(fig)))
    slo = sec.get("slo") or {}
    if slo.get("series"):
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
        step = slo.get("series_batches", 1)
        styles = {"unthrottled": "-", "SLO-aware + int8 deltas": "-", "SLO-aware": "-", "FIFO": "--",
                  "checkpoints only": ":"}
        for name, ys in slo["series"].items():
            ax.plot(np.arange(1, len(ys) + 1) * step, ys, styles.get(name, "-"), lw=1.4, label=name)
        ax.set_xlabel("batch of the replay")
        ax.set_ylabel("far-DC AUC")
        ax.set_title(f"ekko: SLO-aware updater, link at {slo.get('link_fraction', 0):.0%} of the update stream",
                     fontsize=10)
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
        names = list(slo.get("auc", {}))
        bx.barh(names, [slo["auc"][n] for n in names], color="#4c72b0")
        lo = min(slo["auc"].values())
        bx.set_xlim(lo - 0.02, max(slo["auc"].values()) + 0.01)
        bx.set_xlabel("far-DC AUC over the replay")
        closed = slo.get("gap_closed") or {}
        bx.set_title("FIFO -> unthrottled gap closed: " + ", ".join(
            f"{k.replace('SLO-aware', 'SLO')} {v:.0%}" for k, v in closed.items() if v is not None), fontsize=9)
        bx.invert_yaxis()
        fig.tight_layout()
        out.append(("SLO-aware updater under a short link", _png(fig)))
    if sec.get("scale"):
        out += plot_ekko_scale(sec["scale"])
    return out


def plot_ekko_scale(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Simulated update latency against the number of DCs (ekko p50/p99, central push p50/p99, the floor), and the
    origin server's WAN NIC utilisation under each (1.0 = saturated: its queue only grows)."""
    rows = sorted(rows, key=lambda r: r["dcs"])
    if not rows:
        return []
    dcs = np.array([r["dcs"] for r in rows], float)

    def col(key: str) -> np.ndarray:
        return np.array([_num(r.get(key)) if _num(r.get(key)) is not None else np.nan for r in rows], float)

    out = []
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    ax.plot(dcs, col("floor_s") * 1e3, "k:", lw=1.4, label="floor (one-way delay + serialisation)")
    for mode, color in (("ekko", "#1d3557"), ("push", "#c0392b"), ("checkpoint", "#7f8c8d")):
        if f"{mode}_p50_s" in rows[0]:
            ax.plot(dcs, col(f"{mode}_p50_s") * 1e3, "o-", color=color, label=f"{mode} p50")
            ax.plot(dcs, col(f"{mode}_p99_s") * 1e3, "s--", color=color, alpha=.7, label=f"{mode} p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(dcs, [str(int(d)) for d in dcs])
    ax.set_xlabel("data centres")
    ax.set_ylabel("update latency to the last server (ms)")
    servers = rows[0].get("servers_per_dc")
    ax.set_title(f"ekko at scale (simulated, {servers} servers per DC): latency vs DCs", fontsize=11)
    ax.grid(alpha=.3, which="both")
    ax.legend(fontsize=8, ncol=3)
    out.append(("Simulated update latency vs number of DCs", _png(fig)))
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    for mode, color in (("ekko", "#1d3557"), ("push", "#c0392b")):
        if f"{mode}_origin_nic_util" in rows[0]:
            ax.plot(dcs, col(f"{mode}_origin_nic_util"), "o-", color=color, label=mode)
    ax.axhline(1.0, color="#7f8c8d", ls="--", lw=1, label="saturated")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dcs, [str(int(d)) for d in dcs])
    ax.set_xlabel("data centres")
    ax.set_ylabel("origin WAN NIC busy / stream time")
    ax.set_title("origin server's NIC utilisation (simulated)", fontsize=11)
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    out.append(("Origin NIC utilisation vs number of DCs", _png(fig)))
    return out


def _mark_rollback(ax: plt.Axes, rb: Mapping[str, Any]) -> None:
    styles = [("injected_at_s", "harmful update", "#c0392b", ":"),
              ("detected_at_s", "detected", "#d4a017", "--"),
              ("rolled_back_at_s", "rolled back", "#2e8b57", "-"),
              ("trainer_fixed_at_s", "trainer fixed (operator)", "#7f8c8d", "-."),
              ("released_at_s", "quarantine released", "#2980b9", "--")]
    for key, label, color, ls in styles:
        x = _num(rb.get(key))
        if x is not None:
            ax.axvline(x, color=color, ls=ls, lw=1.6, label=label)


def plot_faery(sec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Retrieval latency vs K for faery, Faiss flat (if measured) and numpy brute force."""
    rows = sec.get("latency_vs_k") or []
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    ks = [r["k"] for r in rows]
    for key, label, style in (("ours_ms", "faery Index", "o-"), ("faiss_ms", "faiss.IndexFlatIP", "s--"),
                              ("numpy_ms", "numpy matmul + argpartition", "^:")):
        pts = [(k, _num(r.get(key))) for k, r in zip(ks, rows, strict=True)]
        pts = [(k, v) for k, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("K (top-K candidates)")
    ax.set_ylabel("median latency per query (ms)")
    ax.set_title("faery: single-query retrieval latency vs K")
    ax.grid(alpha=.3, which="both")
    ax.legend(fontsize=8)
    return [("Retrieval latency vs K", _png(fig))]


def plot_g2miner(sec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Mining time per pattern: g2miner vs the peers measured in the same run (log scale bars)."""
    rows = sec.get("patterns") or []
    if not rows:
        return []
    peers = [("ours_s", "g2miner"), ("networkx_s", "networkx"), ("igraph_s", "igraph")]
    peers = [(k, lab) for k, lab in peers if any(_num(r.get(k)) is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(9.5, 4.0))
    width = 0.8 / max(len(peers), 1)
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(peers):
        vals = [_num(r.get(key)) or 0.0 for r in rows]
        bars = ax.bar(x + (i - (len(peers) - 1) / 2) * width, vals, width, label=label)
        for b, v in zip(bars, vals, strict=True):
            if v > 0:
                ax.annotate(f"{v:.3g}s", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [str(r.get("pattern")) for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("time (s, log scale)")
    ax.set_title("g2miner: mining time vs peers on the co-interaction graph")
    ax.grid(alpha=.3, axis="y")
    ax.legend(fontsize=8)
    return [("Mining time vs peers", _png(fig))]


PLOTTERS = {"ekko": plot_ekko, "faery": plot_faery, "g2miner": plot_g2miner}
SERIES_KEYS = {"latency", "quality", "rollback_series"}


_NUM = ' class="n"'
HTML_TABLE_CHARS = 110  # a table wider than this many characters of text is split or transposed, as in a terminal


def _fmt(key: str, v: Any) -> str:
    """A value as the report shows it: the terminal tables' formatting (units, 3 significant digits)."""
    v = to_jsonable(v)
    if isinstance(v, Mapping):
        return "<br>".join(f"{html.escape(str(k))} = {_fmt(str(k), x)}" for k, x in v.items())
    return html.escape(format_value(key, v))


def _td(key: str, v: Any) -> str:
    """A table cell: numbers right-aligned, text left-aligned."""
    v = to_jsonable(v)
    cls = _NUM if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f"<td{cls}>{_fmt(key, v)}</td>"


def _is_rows(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _rows_html(rows: Sequence[Mapping[str, Any]], caption: str) -> str:
    """Rows as one or more HTML tables, cut like the terminal tables (`recmine.output.layout`)."""
    rows = [{k: v for k, v in r.items() if not isinstance(v, (list, tuple, np.ndarray))} for r in rows]
    parts = layout(format_columns(rows), HTML_TABLE_CHARS)
    out = []
    for n, (cols, _) in enumerate(parts):
        cap = caption if len(parts) == 1 or not caption else f"{caption} ({n + 1}/{len(parts)})"
        head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td{_NUM if c.numeric else ''}>{html.escape(c.cells[r])}</td>"
                                        for c in cols) + "</tr>" for r in range(len(cols[0].cells)))
        out.append(f'<div class="scroll"><table><caption>{html.escape(cap)}</caption><tr>{head}</tr>{body}'
                   "</table></div>")
    return "".join(out)


def _section_html(key: str, title: str, lead: str, sec: Mapping[str, Any] | None) -> str:
    parts = [f'<section id="{key}"><h2>{html.escape(title)}</h2><p class="lead">{html.escape(lead)}</p>']
    if sec is None:
        parts.append('<div class="skip">This section was not run.</div></section>')
        return "".join(parts)
    if sec.get("error"):
        parts.append(f'<div class="err">{html.escape(str(sec["error"]))}</div>')
    if sec.get("skipped"):
        parts.append(f'<div class="skip">{html.escape(str(sec["skipped"]))}</div>')
    scalars = {k: v for k, v in sec.items()
               if k not in ("error", "skipped") and not _is_rows(v) and not isinstance(v, (list, tuple))
               and not (isinstance(v, Mapping) and k in SERIES_KEYS)}
    if scalars:
        body = "".join(f"<tr><td>{html.escape(k)}</td>{_td(k, v)}</tr>" for k, v in scalars.items())
        parts.append(f"<table><tr><th>fact</th><th>value</th></tr>{body}</table>")
    for name, uri in PLOTTERS[key](sec):
        parts.append(f'<img alt="{html.escape(name)}" title="{html.escape(name)}" src="{uri}">')
    for k, v in sec.items():
        if _is_rows(v) and k not in SERIES_KEYS:
            parts.append(_rows_html(v, k))
    parts.append("</section>")
    return "".join(parts)


def render_html(results: Mapping[str, Any]) -> str:
    """The report page as one HTML string (all plots inline)."""
    results = to_jsonable(results)
    meta = results.get("meta", {}) or {}
    sub = " · ".join(f"{html.escape(str(k))}: {_fmt(str(k), v)}" for k, v in meta.items()
                     if not isinstance(v, (Mapping, list, tuple)))
    body = "".join(_section_html(k, t, lead, results.get(k)) for k, t, lead in SECTIONS)
    if _is_rows(results.get("summary")):
        body = f'<section id="summary"><h2>Summary</h2>{_rows_html(results["summary"], "")}</section>' + body
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>recmine demo report</title><style>{CSS}</style></head><body>"
        "<header><h1>recmine demo report</h1>"
        "<p>ekko (fresh models across data centres) · faery (exact retrieval) · g2miner (graph pattern mining), "
        f"on generated data</p><p>{sub}</p></header><main>{body}"
        "<footer>Self-contained page: every plot is an embedded PNG; raw numbers in results.json.</footer>"
        "</main></body></html>"
    )


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write `report.html` and `results.json` into `out_dir` (created if missing); return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = to_jsonable(results)
    (out / "results.json").write_text(json.dumps(clean, indent=2) + "\n")
    page = out / "report.html"
    page.write_text(render_html(results), encoding="utf-8")
    return page
