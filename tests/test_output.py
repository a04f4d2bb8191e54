"""output.py: numbers with units and 3 significant digits, exact counts, and tables that fit an 80-column
terminal without cutting any cell short (split or transposed when too wide)."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from recmine import output
from recmine.cli import app
from recmine.output import emit, fmt_number, format_columns, format_value, layout, rows_table

BOX = re.compile(r"[┃│┏┓┗┛┡┩└┘━─]")


def render(renderable: object, width: int = 80) -> str:
    c = Console(width=width, record=True, color_system=None)
    c.print(renderable)
    return c.export_text()


def assert_fits(text: str, width: int = 80) -> None:
    """Every line fits `width` cells and nothing was cut short with an ellipsis."""
    for line in text.splitlines():
        assert len(line.rstrip()) <= width, line
        assert "…" not in line, line


def test_fmt_number_three_significant_digits() -> None:
    cases = {0.018438: "0.0184", 14.7141: "14.7", 9.996: "10.0", 1234567.0: "1,230,000", 2.0: "2.00",
             0.00001234: "1.23e-05", -0.5: "-0.500", 999.6: "1,000", 0.0: "0", float("nan"): "n/a"}
    for value, want in cases.items():
        assert fmt_number(value) == want, value


def test_units_read_from_keys_counts_exact() -> None:
    assert format_value("p50_ms", 0.026735) == "26.7 µs" and format_value("p99_ms", 146.855) == "147 ms"
    assert format_value("ours_s", 0.0026912) == "2.69 ms"  # seconds shown in the unit that suits them
    assert format_value("networkx_s", 4.28) == "4.28 s"
    assert format_value("list_seconds", 0.0111295) == "11.1 ms"
    assert format_value("wait_us", 1500.0) == "1.50 ms"
    assert format_value("x_networkx", 192.66) == "193x" and format_value("speedup_vs_faiss", 1.14312) == "1.14x"
    assert format_value("nic_mbps", 100.0) == "100 Mb/s"
    assert format_value("count", 81005) == "81,005" and format_value("wan_bytes", 12345678) == "12,345,678 B"
    assert format_value("rtt_ms", 50) == "50 ms"  # an exact integer stays exact
    assert format_value("recall", 0.979167) == "0.979"
    assert format_value("exact", True) == "yes" and format_value("p99_ms", None) == "-"
    assert format_value("rollback", {"detect_s": 1.0665, "keys": 1220}) == "detect_s=1.07 s, keys=1,220"


def test_a_time_column_reads_in_one_unit() -> None:
    cols = format_columns([{"dc": "dc0", "p50_ms": 0.0267}, {"dc": "dc1", "p50_ms": 59.7686},
                           {"dc": "dc2", "p50_ms": 68.9}])
    assert cols[1].header == "p50" and cols[1].cells == ["0.0267 ms", "59.8 ms", "68.9 ms"] and cols[1].numeric


# the g2miner table as the demo printed it on main (`pat… cou… our…` at 80 columns)
WIDE = [{"pattern": "triangle", "count": 49267, "ours_s": 0.0026912, "compile_s": 0.0079581,
         "networkx_count": 49267, "networkx_s": 0.10471, "igraph_count": 49267, "igraph_s": 4.6822,
         "x_networkx": 38.9097, "x_igraph": 1739.8, "matches_networkx": True},
        {"pattern": "4-clique", "count": 81005, "ours_s": 0.0222141, "compile_s": 0.012234,
         "networkx_count": 81005, "networkx_s": 4.27979, "igraph_count": 81005, "igraph_s": 4.7262,
         "x_networkx": 192.66, "x_igraph": 212.75, "matches_networkx": True}]


def _cells_shown(rows: list[dict], text: str) -> None:
    """Every formatted cell and header word appears whole in the rendered text (nothing cropped)."""
    words = set(text.split())
    for col in format_columns(rows):
        for w in col.header.split():
            assert w in words, (col.header, w)
        for cell in col.cells:
            for w in cell.split():
                assert w in words, (col.key, cell)


@pytest.mark.parametrize("n_rows", [2, 12])
def test_wide_table_fits_80_columns_whole(n_rows: int) -> None:
    rows = [dict(WIDE[r % 2], pattern=f"{WIDE[r % 2]['pattern']}-{r}") for r in range(n_rows)]
    text = render(rows_table(rows, title="g2miner: dense patterns in the co-interaction graph"))
    assert_fits(text)
    _cells_shown(rows, text)
    assert "2.69 ms" in text and "49,267" in text and "0.0026912" not in text
    parts = layout(format_columns(rows), 80)
    if n_rows <= 3:
        assert len(parts) == 1 and parts[0][0][0].key == "field"  # transposed: fields as rows
    else:
        assert len(parts) > 1 and all(p[0][0].key == "pattern" for p in parts)  # split, label repeated
        assert text.count("(1/") == 1


def test_long_text_wraps_instead_of_being_cut() -> None:
    rows = [{"system": "ekko", "seconds": 19.6, "status": "ok",
             "headline": "served AUC 0.740 vs popularity 0.555 and stale checkpoint 0.634 before the fault; "
                         "harm detected 1.07 s (6 batches) after injection, rolled back in every DC in 84 ms"},
            {"system": "g2miner", "seconds": 23.1, "status": "ok", "headline": "triangle 49,267 in 2.69 ms"}]
    text = render(rows_table(rows, title="summary"), 80)
    assert_fits(text)
    _cells_shown(rows, text)
    assert len(layout(format_columns(rows), 80)) == 1  # one table: the headline column wraps
    assert_fits(render(rows_table(rows), 60), 60)


def test_emit_flattens_and_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Console(width=80, record=True, color_system=None)
    monkeypatch.setattr(output, "console", c)
    emit({"graph": "g.txt", "seconds": 0.018438, "rollback": {"detect_s": 1.0665, "keys": 1220}, "rows": WIDE},
         as_json=False, title="t")
    text = c.export_text()
    assert_fits(text)
    assert "rollback.detect_s" in text and "1.07 s" in text and "18.4 ms" in text


def test_json_output_keeps_full_precision(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"seconds": 0.018438123456789, "rows": WIDE}, as_json=True, title="t")
    out = json.loads(capsys.readouterr().out)
    assert out["seconds"] == 0.018438123456789 and out["rows"][0]["ours_s"] == 0.0026912


def test_cli_tables_fit_80_columns(tmp_path) -> None:
    """A few CLI commands' tables, as printed on an 80-column (non-terminal) stdout."""
    g = tmp_path / "g.txt"
    g.write_text("".join(f"{a} {b}\n" for a in range(12) for b in range(a + 1, 12) if (a * b) % 3 != 1))
    runner = CliRunner()
    for args in (["mine", "count", "-g", str(g), "-p", "triangle"], ["mine", "motifs", "-g", str(g), "-k", "4"],
                 ["retrieve", "bench", "--n", "3000", "--dim", "16", "-k", "1,10,100", "--queries", "3"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert_fits(res.output)
        assert BOX.search(res.output)  # a table was printed
