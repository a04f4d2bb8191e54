"""`recmine demo --quick --json --report`: every section's numbers checked against independent oracles
(networkx counts on the same generated graph, numpy brute-force top-K), rollback reported, and no process the
demo started is left alive after it exits (normally or on Ctrl-C)."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from recmine.demo import DemoConfig, g2miner_graph

TOKEN_VAR = "RECMINE_DEMO_TEST_TOKEN"


def _engine_ready(module: str, attr: str) -> bool:
    """Whether a system's public API has landed in this checkout (sections of missing engines are skipped)."""
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001
        return False


def _children_of(root: int) -> set[int]:
    """pids of all live descendants of `root` (via /proc/<pid>/stat parent links)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    out: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in out}
        out |= frontier
    return out


def _alive_with_token(token: str) -> list[int]:
    """Live (non-zombie) processes that inherited the demo's environment marker: anything it started."""
    alive = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{TOKEN_VAR}={token}".encode() in env and state != "Z":
            alive.append(int(d))
    return alive


class _Watcher:
    """Records every descendant pid of a running process, so orphans re-parented to init are caught too."""

    def __init__(self, pid: int) -> None:
        self.pid, self.seen, self._stop = pid, set(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= _children_of(self.pid)
            time.sleep(0.2)

    def stop(self) -> set[int]:
        self._stop.set()
        self._t.join()
        return self.seen


def _still_alive(pids: set[int], token: str) -> list[int]:
    return [p for p in pids if p in _alive_with_token(token)]


def _start(args: list[str], token: str) -> subprocess.Popen:
    env = {**os.environ, TOKEN_VAR: token, "PYTHONUNBUFFERED": "1", "COLUMNS": "80"}
    return subprocess.Popen([sys.executable, "-m", "recmine.cli", "demo", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    token = uuid.uuid4().hex
    proc = _start(["--quick", "--json", "--report", str(out)], token)
    watcher = _Watcher(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        seen = watcher.stop()
    time.sleep(0.5)
    return {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "out": out, "token": token, "seen": seen}


def test_demo_exits_cleanly_with_one_json_object(demo_run: dict) -> None:
    assert demo_run["rc"] == 0, demo_run["stderr"][-3000:]
    res = json.loads(demo_run["stdout"])
    assert set(res) >= {"meta", "ekko", "faery", "g2miner"}
    assert res["meta"]["quick"] is True
    assert _alive_with_token(demo_run["token"]) == []
    assert _still_alive(demo_run["seen"], demo_run["token"]) == []


def test_demo_report_written(demo_run: dict) -> None:
    page = (demo_run["out"] / "report.html").read_text()
    data = json.loads((demo_run["out"] / "results.json").read_text())
    assert data["meta"]["seed"] == 0
    assert "recmine demo report" in page and 'src="http' not in page
    n_img = len(re.findall(r'<img [^>]*src="data:image/png;base64,', page))
    expected = sum(2 if s == "ekko" else 1 for s in ("ekko", "faery", "g2miner")
                   if not data[s].get("skipped") and not data[s].get("error"))
    assert n_img >= min(expected, 3)


def _section(demo_run: dict, name: str, module: str, attr: str) -> dict | None:
    sec = json.loads(demo_run["stdout"])[name]
    if not _engine_ready(module, attr):
        assert "not available" in sec.get("skipped", ""), sec
        return None
    assert "error" not in sec and "skipped" not in sec, sec
    return sec


def test_g2miner_counts_equal_networkx(demo_run: dict) -> None:
    sec = _section(demo_run, "g2miner", "recmine.g2miner", "count")
    if sec is None:
        pytest.skip("recmine.g2miner.count has not landed in this checkout")
    g = g2miner_graph(DemoConfig.quick_config(0))
    G = nx.Graph()
    G.add_nodes_from(range(g.n_vertices))
    G.add_edges_from(g.edge_array().tolist())
    assert sec["vertices"] == g.n_vertices and sec["edges"] == G.number_of_edges()
    tri = sum(nx.triangles(G).values()) // 3
    k4 = sum(1 for c in nx.enumerate_all_cliques(G) if len(c) == 4)
    counts = {r["pattern"]: r["count"] for r in sec["patterns"]}
    assert counts == {"triangle": tri, "4-clique": k4}
    # the planted rings are in there: each ring alone holds C(s,4) 4-cliques
    assert k4 >= sec["planted_rings"] * sec["ring_4cliques_each"] > 0
    assert all(r["ours_s"] > 0 and r["networkx_s"] > 0 for r in sec["patterns"])
    # listing 4-cliques flags the planted ring accounts
    rd = sec["ring_detection"]
    assert rd["planted"] == sum(len(r) for r in g.rings) and rd["flagged_planted"] >= 0.9 * rd["planted"]


def test_faery_retrieval_equals_numpy_bruteforce(demo_run: dict) -> None:
    sec = _section(demo_run, "faery", "recmine.faery", "Index")
    if sec is None:
        pytest.skip("recmine.faery.Index has not landed in this checkout")
    chk = np.load(demo_run["out"] / "faery_check.npz")
    ids, table, q, got, k = chk["ids"], chk["table"], chk["queries"], chk["result_ids"], int(chk["k"])
    assert np.isfinite(table).all() and len(np.unique(ids)) == len(ids) == sec["index_items"]
    assert len(ids) == sec["live_items"] + sec["new_items_added"] - sec["items_removed"]
    scores = q.astype(np.float64) @ table.astype(np.float64).T
    for row in range(q.shape[0]):
        order = sorted(range(len(ids)), key=lambda j, r=row: (-scores[r, j], ids[j]))[:k]
        want = ids[order]
        # identical ids, allowing swaps only between fp32-equal scores
        if not np.array_equal(got[row], want):
            s32 = (q[row] @ table.T)
            pos = {int(i): n for n, i in enumerate(ids)}
            np.testing.assert_allclose(np.sort(s32[[pos[int(i)] for i in got[row]]]), np.sort(s32[order]), rtol=1e-6)
    assert sec["retrieval_exact"] is True and sec["refreshed_rows"] > 0
    for r in sec["latency_vs_k"]:
        assert r["ours_ms"] > 0 and r["exact"] is True and r["numpy_ms"] > 0


def test_ekko_latency_and_rollback_reported(demo_run: dict) -> None:
    sec = json.loads(demo_run["stdout"])["ekko"]
    if sec.get("skipped"):
        assert "recmine.ekko" in sec["skipped"]  # says what is missing
        pytest.skip(f"ekko stage not run: {sec['skipped']}")
    assert "error" not in sec, sec
    assert sec["dcs"] == 4 and len(sec["latency"]) == 4 and len(sec["per_dc"]) == 4
    for s in sec["latency"]:
        assert len(s["t_s"]) == len(s["latency_s"]) > 0 and min(s["latency_s"]) > 0
    # every row the trainer put at DC 0 became visible in every DC (a newer version of the key carries it), and
    # remote DCs sit behind the emulated WAN's one-way delay
    origin = sec["per_dc"][0]["rows"]
    assert origin > 0 and sec["remote_rows"] == 3 * origin
    for r in sec["per_dc"][1:]:
        assert r["rows"] == origin and r["visible"] == r["rows"], r
        assert r["p50_ms"] >= 0.9 * sec["rtt_ms"] / 2
    assert sec["per_dc"][0]["p50_ms"] < sec["rtt_ms"] / 2
    assert len(sec["quality"]["live"]) > 0 and all(0.0 <= a <= 1.0 for a in sec["quality"]["live"])
    slo = sec["slo"]  # the SLO-aware updater behind a short (simulated) link, with its plot in the report
    assert set(slo["auc"]) == {"unthrottled", "checkpoints only", "SLO-aware + int8 deltas", "SLO-aware", "FIFO"}
    assert all(0.0 <= a <= 1.0 for a in slo["auc"].values()) and all(len(s) > 0 for s in slo["series"].values())
    assert slo["wire_mb"]["SLO-aware + int8 deltas"] < slo["wire_mb"]["unthrottled"]
    assert "SLO-aware updater under a short link" in (demo_run["out"] / "report.html").read_text()
    # the simulator's run at scale: every DC count, ekko near its floor, every update visible
    assert [r["dcs"] for r in sec["scale"]] == [4, 16]
    for r in sec["scale"]:
        assert r["ekko_visible"] == r["ekko_updates"] > 0 and r["floor_s"] <= r["ekko_p50_s"] <= 2 * r["floor_s"]
    rb = sec["rollback"]
    if not sec["detected"]:
        assert "guard" in sec["rollback_status"]  # says why no rollback ran
    else:
        assert rb["injected_at_s"] <= rb["detected_at_s"] <= rb["rolled_back_at_s"]
        assert rb["keys"] > 0


def test_every_demo_table_fits_80_columns(demo_run: dict) -> None:
    """The tables the demo printed (to stderr, beside --json) on an 80-column console: every line fits, no cell
    is cut short with an ellipsis, and measured numbers carry units and 3 significant digits."""
    lines = demo_run["stderr"].splitlines()
    tables = [ln for ln in lines if re.search(r"[┃│]", ln)]
    for ln in lines:
        assert len(ln.rstrip()) <= 80, ln
    for ln in tables:
        assert "…" not in ln, ln
        assert not re.search(r"\d\.\d{5,}", ln), ln  # no 0.018438-style numbers
    assert re.search(r"\d ms\b", "\n".join(tables))
    assert sum(1 for ln in lines if ln.startswith("┏")) >= 6  # ekko x3, faery, g2miner x2, summary


def test_ekko_quality_covers_before_during_and_after_the_fault(demo_run: dict) -> None:
    """Served AUC series beside the popularity baseline over the whole run, the injection, detection, rollback,
    operator fix and release inside it; false alarms counted on the clean windows, detection delay measured from
    the injection, and the rollback held while the faulty trainer kept sending."""
    sec = json.loads(demo_run["stdout"])["ekko"]
    if sec.get("skipped"):
        pytest.skip(f"ekko stage not run: {sec['skipped']}")
    q, rb, g = sec["quality"], sec["rollback"], sec["guard"]
    t = np.asarray(q["t_s"])
    assert len(t) == len(q["live"]) == len(q["popularity"]) == len(q["stale"]) == sec["batches"]
    assert np.all(np.diff(t) >= 0)
    assert sec["detected"], sec["rollback_status"]
    marks = [rb[k] for k in ("injected_at_s", "detected_at_s", "rolled_back_at_s", "trainer_fixed_at_s",
                             "released_at_s")]
    assert t[0] < marks[0] and marks == sorted(marks) and marks[-1] < t[-1]
    before, harm, after = t < marks[0], (t >= marks[0]) & (t < marks[2]), t >= marks[4]
    assert before.sum() >= 5 and harm.sum() >= 1 and after.sum() >= 3
    live, pop = np.asarray(q["live"], float), np.asarray(q["popularity"], float)
    assert np.nanmean(live[before]) >= np.nanmean(pop[before]) + 0.05  # the model learned something real
    assert np.nanmin(live[harm]) < np.nanmean(live[before]) - 0.1  # the harm shows
    assert np.nanmean(live[after]) > np.nanmin(live[harm]) + 0.05  # and recovery after the rollback
    # honest guard numbers: alarms acted on, false ones counted, delay from the injection
    assert g["false_alarms"] == sum(1 for a in sec["alarms"] if not a["true_alarm"]) and g["clean_windows"] > 0
    assert rb["detect_s"] == pytest.approx(rb["detected_at_s"] - rb["injected_at_s"]) and rb["detect_s"] > 0
    assert rb["batches_to_detect"] >= 1 and rb["rollback_s"] > 0
    assert rb["harmful_batches_held"] > 0 and rb["rollback_held_checks"] > 0
    assert rb["rollback_held_ok"] == rb["rollback_held_checks"]
    status = next(r for r in json.loads(demo_run["stdout"])["summary"] if r["system"] == "ekko")["status"]
    assert (status == "ok") == (g["false_alarms"] == 0)


def test_ctrl_c_stops_everything() -> None:
    """SIGINT mid-run (as Ctrl-C sends it): exit code 130, promptly, and nothing the demo started survives."""
    token = uuid.uuid4().hex
    proc = _start([], token)  # full size: long enough to be interrupted mid-stage
    watcher = _Watcher(proc.pid)
    try:
        out_lines: list[str] = []
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # a finished step prints its progress line (non-tty console)
            out_lines.append(line)
            if re.search(r"(ekko|faery|g2miner): \w", line) or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "the demo finished before it could be interrupted"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            rest, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it hangs: the demo dumps every thread's stack on SIGUSR1
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            rest, err = proc.communicate()
            raise AssertionError(f"the demo did not stop within 60 s of SIGINT; its threads:\n{err[-6000:]}") from None
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        seen = watcher.stop()
    time.sleep(0.5)
    assert proc.returncode == 130, "".join(out_lines) + rest + err[-2000:]
    assert stop_s < 30
    assert "interrupted" in rest + "".join(out_lines)
    assert _alive_with_token(token) == [] and _still_alive(seen, token) == []
