"""`recmine ekko` CLI: cluster up/status/down leaves nothing running; bench prints the documented JSON keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from recmine.cli import app

runner = CliRunner()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purposes
        return fh.read().split()[2] != "Z"


def test_cluster_up_status_down(tmp_path):
    topo = tmp_path / "topo.json"
    topo.write_text(json.dumps({"dcs": 2, "replicas": 1, "shards": 1, "tables": {"emb": 4}, "rtt_ms": 10}))
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "recmine.cli", "ekko", "cluster"]
    up = subprocess.run([*cmd, "up", "-t", str(topo), "--state", str(state), "--json"], capture_output=True,
                        text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    pids = json.loads((state / "state.json").read_text())["pids"]
    try:
        status = subprocess.run([*cmd, "status", "--state", str(state), "--json"], capture_output=True, text=True,
                                timeout=30)
        nodes = json.loads(status.stdout)["nodes"]
        assert [n["status"] for n in nodes] == ["SERVING", "SERVING"]
    finally:
        down = subprocess.run([*cmd, "down", "--state", str(state), "--json"], capture_output=True, text=True,
                              timeout=30)
    assert json.loads(down.stdout)["stopped_processes"] == 3
    assert not any(_alive(p) for p in pids.values())
    again = runner.invoke(app, ["ekko", "cluster", "status", "--state", str(state)])
    assert again.exit_code == 2 and "no cluster state" in again.output


def test_bench_json_keys():
    res = runner.invoke(app, ["ekko", "bench", "--dcs", "2", "--duration", "2.5", "--rate", "500",
                              "--checkpoint-s", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("dcs", "ekko_p50_s", "ekko_p99_s", "floor_s", "push_p50_s", "push_p99_s", "checkpoint_p50_s",
                "wan_bytes_per_update"):
        assert key in out
    for mode in ("ekko", "push", "checkpoint"):  # every update written is accounted for: visible or +inf
        assert out[f"{mode}_visible"] == out[f"{mode}_updates"] > 0
    assert out["dcs"] == 2 and 0 < out["floor_s"] < out["checkpoint_p50_s"]
    assert out["ekko_p50_s"] < out["checkpoint_p50_s"]


def test_bad_topology_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"dcs": -1}')
    res = runner.invoke(app, ["ekko", "cluster", "up", "-t", str(bad), "--state", str(tmp_path / "s")])
    assert res.exit_code == 2 and "'dcs' must be a positive integer" in res.output
