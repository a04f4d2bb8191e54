"""report.py: the page is self-contained and renders with its images in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from recmine.report import HTML_TABLE_CHARS, render_html, write_report

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
]


def _chromium() -> str | None:
    """Path of Debian's chromium; installs it (as root, with apt) when absent; None if that is impossible."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                           env=env, timeout=600, capture_output=True)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return shutil.which("chromium")
    return None


def sample_results() -> dict:
    """Results shaped like `run_demo`'s, with synthetic series (this tests the page, not the engines)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 30, 60)
    latency = [{"dc": f"dc{i}", "t_s": t, "latency_s": 0.05 * (i + 1) + 0.01 * rng.random(60)} for i in range(4)]
    return {
        "meta": {"seed": 0, "quick": True, "seconds": 12.5, "machine": "test"},
        "ekko": {
            "dcs": 4, "updates": 1234, "p50_latency_s": 0.11,
            "latency": latency,
            "rollback": {"injected_at_s": 10.0, "detected_at_s": 12.0, "rolled_back_at_s": 12.4, "keys": 50,
                         "trainer_fixed_at_s": 18.0, "released_at_s": 19.5, "detect_s": 2.0},
            "quality": {"t_s": t, "live": 0.8 - 0.2 * ((t > 10) & (t < 12.4)), "popularity": np.full(60, 0.6),
                        "stale": np.linspace(0.75, 0.6, 60), "metric": "AUC"},
            "per_dc": [{"dc": f"dc{i}", "p50_ms": 50.0 * (i + 1), "p99_ms": 60.0 * (i + 1)} for i in range(4)],
        },
        "faery": {
            "n_items": 5000, "dim": 64,
            "latency_vs_k": [{"k": k, "ours_ms": 0.1 * k ** 0.2, "faiss_ms": 0.5, "numpy_ms": 0.7}
                             for k in (1, 10, 100, 1000)],
        },
        "g2miner": {
            "vertices": 1000, "edges": 5000,
            "patterns": [{"pattern": "triangle", "count": 49267, "ours_s": 0.0026912, "compile_s": 0.0079581,
                          "networkx_count": 49267, "networkx_s": 0.10471, "igraph_count": 49267, "igraph_s": 4.6822,
                          "x_networkx": 38.9097, "x_igraph": 1739.8, "matches_networkx": True},
                         {"pattern": "4-clique", "count": 81005, "ours_s": 0.0222141, "compile_s": 0.012234,
                          "networkx_count": 81005, "networkx_s": 4.27979, "igraph_count": 81005, "igraph_s": 4.7262,
                          "x_networkx": 192.66, "x_igraph": 212.75, "matches_networkx": True}],
        },
    }


def test_write_report_files_and_json(tmp_path: Path) -> None:
    page = write_report(sample_results(), tmp_path / "out")
    assert page.name == "report.html" and page.exists()
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["ekko"]["rollback"]["rolled_back_at_s"] == 12.4
    assert len(data["ekko"]["latency"][0]["t_s"]) == 60
    text = page.read_text()
    # self-contained: no external resource of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<script" not in text
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 4  # latency per DC, quality, latency vs K, mining time
    for u in uris:
        img = mpimg.imread(io.BytesIO(base64.b64decode(u)), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 300 and img[..., :3].std() > 0.05


def _html_tables(text: str) -> list[list[list[str]]]:
    """Every <table> of the page as rows of cell texts (header row first; a cell's <br> lines: its longest)."""
    out = []
    for tab in re.findall(r"<table>(.*?)</table>", text, flags=re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", tab, flags=re.S)
        out.append([[max((html.unescape(re.sub(r"<[^>]+>", "", line)).strip() for line in c.split("<br>")), key=len)
                     for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, flags=re.S)] for r in rows])
    return out


def test_report_tables_use_units_and_fit() -> None:
    """The report's tables format like the terminal's (units, 3 significant digits, exact counts) and a table
    too wide to read is transposed or split (at most HTML_TABLE_CHARS characters of text per row)."""
    text = render_html(sample_results())
    tables = _html_tables(text)
    for tab in tables:
        cols = list(zip(*[r for r in tab if len(r) == len(tab[0])], strict=True))
        assert sum(max(len(c) for c in col) + 3 for col in cols) <= HTML_TABLE_CHARS + 1, tab[0]
    cells = {c for tab in tables for r in tab for c in r}
    assert {"2.69 ms", "49,267", "4.28 s", "193x", "yes"} <= cells and "detect_s = 2.00 s" in text, sorted(cells)
    assert "0.0026912" not in text and "0.002691" not in text
    assert any(tab[0][:3] == ["pattern", "triangle", "4-clique"] for tab in tables)  # transposed


def test_sections_with_errors_and_missing_render() -> None:
    text = render_html({"meta": {}, "ekko": {"error": "cluster failed: <boom>"}, "faery": {"skipped": "no faiss"}})
    assert "cluster failed: &lt;boom&gt;" in text and "no faiss" in text and "was not run" in text
    assert "data:image/png" not in text


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is absent and cannot be installed here")
    page = write_report(sample_results(), tmp_path / "out")
    profile = tmp_path / "profile"
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,', dom.stdout)
    assert len(imgs) == 4
    assert "ekko: model updates across data centres" in dom.stdout
    shot = tmp_path / "shot.png"
    run = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    px = mpimg.imread(shot)[..., :3]
    assert px.shape[0] >= 1000 and px.shape[1] >= 1000
    assert px.std() > 0.05  # not blank
    # the plots are drawn: the band of the page holding the first image has many distinct colours
    assert len(np.unique((px[300:1500] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_ekko_scale_plots_show_every_mode_and_the_saturation_line() -> None:
    from recmine.report import plot_ekko_scale

    rows = [{"dcs": d, "servers_per_dc": 4, "floor_s": 0.025 + d * 1e-4, "ekko_p50_s": 0.03, "ekko_p99_s": 0.04,
             "push_p50_s": 0.03 * d, "push_p99_s": None if d == 256 else 0.05 * d, "ekko_origin_nic_util": d / 800,
             "push_origin_nic_util": d / 60} for d in (64, 4, 256, 16)]
    plots = plot_ekko_scale(rows)
    assert [t for t, _ in plots] == ["Simulated update latency vs number of DCs",
                                     "Origin NIC utilisation vs number of DCs"]
    for _, uri in plots:
        img = mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert img.shape[0] > 200 and img.shape[1] > 400
    page = render_html({"meta": {}, "ekko": {"scale": rows}})
    assert page.count("data:image/png;base64,") == 2
