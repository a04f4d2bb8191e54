"""The simulator: its latency tracker against bench.visibility (the oracle the real benchmark uses), its network
model against arithmetic, every server converging to the last-writer-wins state, and the simulated p50/p99 against
the real emulated cluster on the same update stream."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from recmine.ekko.lab.bench import BenchSpec, run_mode, update_stream, visibility
from recmine.ekko.lab.sim import CpuCost, SimSpec, Simulation, Visibility, cached_cpu, measure_cpu, simulate

FREE = CpuCost(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # no CPU cost: latency is the network's alone


def test_streaming_visibility_matches_the_benchmarks_oracle():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n_nodes = int(rng.integers(1, 5))
        put_keys = rng.integers(0, 12, int(rng.integers(1, 60)))
        stamps = np.sort(rng.integers(1, 10**6, put_keys.size))  # puts are stamped in stream order
        vis = Visibility(put_keys, n_nodes)
        vis.stamp(np.arange(put_keys.size), stamps)
        logs, events = [], []
        for node in range(n_nodes):  # applies at each node: random versions of random keys
            k = rng.integers(0, 14, int(rng.integers(0, 80)))
            ts = rng.integers(1, 10**6, k.size)
            at = np.sort(rng.integers(10**6, 2 * 10**6, k.size))
            events += [(a, node, key, t) for key, t, a in zip(k.tolist(), ts.tolist(), at.tolist(), strict=True)]
            logs.append({"table": np.full(k.size, "emb", dtype=object), "keys": k, "ts": ts, "applied_ns": at})
        for a, node, key, t in sorted(events):  # the simulator reports applies in time order
            vis.seen(node, np.array([key]), np.array([t]), a / 1e9)
        # the oracle is per node; the tracker's time is when the last node saw it (+inf if one never did)
        want = np.max([visibility(np.full(put_keys.size, "emb", dtype=object), put_keys, stamps, log)
                       for log in logs], axis=0)
        got = vis.latencies()
        finite = np.isfinite(want)
        assert np.array_equal(np.isfinite(got), finite)
        assert np.allclose(got[finite], want[finite])


def test_with_free_cpu_latency_is_one_way_delay_plus_serialisation():
    spec = SimSpec(dcs=2, replicas=1, shards=1, duration_s=0.2, rate=100, batch_every_s=0.1, rtt_ms=40,
                   nic_mbps=1.0, lan_delay_ms=0.0, warmup_s=0.0)
    sim = Simulation(spec, "push", FREE)
    res = sim.run()
    sizes = np.array([b.size for b in sim.batches])
    nbytes = sizes * (64 * 4 + 20) + 60  # rows + one message's framing
    want = 0.020 + nbytes * 8 / 1e6  # one-way + the message's time on a 1 Mbit/s NIC
    got = sim.vis.latencies()
    assert np.allclose(got, np.repeat(want, sizes))
    assert res["wan_bytes"] == int(nbytes.sum()) + 60 * sizes.size  # and an acknowledgement back per Apply


@pytest.mark.parametrize("mode", ["ekko", "push", "checkpoint"])
def test_every_server_ends_with_the_same_rows(mode):
    spec = SimSpec(dcs=3, replicas=2, shards=3, duration_s=0.6, checkpoint_s=0.3, rtt_ms=30, jitter_ms=3.0,
                   loss=0.01)
    sim = Simulation(spec, mode)
    res = sim.run()
    assert res["visible"] == res["updates"] == sum(b.size for b in sim.batches[spec.warm_batches:])
    want = sim.nodes[0].store.state_digest()["emb"]
    assert want[0].size == np.unique(np.concatenate(sim.batches)).size
    for node in sim.nodes[1:]:
        got = node.store.state_digest()["emb"]
        assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def test_push_saturates_the_origin_nic_where_ekko_does_not():
    spec = SimSpec(dcs=16, replicas=2, shards=2, duration_s=1.0, nic_mbps=60.0)
    res = simulate(spec, ("ekko", "push"), FREE)
    assert res["push_origin_nic_util"] > 1.0 > 2 * res["ekko_origin_nic_util"]
    assert res["push_p99_s"] > 5 * res["ekko_p99_s"]
    assert res["ekko_p50_s"] <= 1.3 * res["floor_s"]


@pytest.mark.slow
def test_simulator_matches_the_real_cluster_at_2_4_8_dcs():
    """Same update stream, same network; the simulator's CPU model is measured from real server processes and shares
    the host's cores (less what other work on the machine took meanwhile). p50 within 25% at 2, 4 and 8 DCs; p99
    within 25% at 2 and 4. At 8 DCs (32 server processes and the emulator on 2 vCPUs, the host ~70% busy) a batch
    travels as one message, so p99 is about the 2nd-slowest of the 125 measured batches: the real one catches the host's
    scheduling hiccups the model does not have (measured 1.2-1.8x the simulated p99 in single runs, 2.2x once on CI).
    There the real run is repeated 3 times (medians) and the simulated p99 must be a lower bound within 2x."""
    cpu = measure_cpu(64)
    rows = []
    for dcs in (2, 4, 8):
        spec = BenchSpec(dcs=dcs, duration_s=3.0)
        reals = [run_mode(spec, "ekko") for _ in range(3 if dcs == 8 else 1)]
        other = max(r["other_load_cores"] for r in reals)
        if other > 1.0:
            pytest.skip(f"other work used {other:.2f} of this machine's cores during the real run: its latency then "
                        "measures the neighbours, not the emulated network")
        host = max(0.5, (os.cpu_count() or 1) - float(np.median([r["other_load_cores"] for r in reals])))
        sim = Simulation(SimSpec(**dataclasses.asdict(spec), host_cores=host, proxy=True), "ekko", cpu).run()
        want = sum(b.size for b in update_stream(spec)[spec.warm_batches:])
        assert sim["updates"] == want and all(r["updates"] == want for r in reals)
        rows.append((dcs, float(np.median([r["p50_s"] for r in reals])), sim["p50_s"],
                     float(np.median([r["p99_s"] for r in reals])), sim["p99_s"]))
    for dcs, r50, s50, r99, s99 in rows:
        assert abs(s50 - r50) <= 0.25 * r50, rows
        if dcs < 8:
            assert abs(s99 - r99) <= 0.25 * r99, rows
        else:
            assert 0.9 * s99 <= r99 <= 2.0 * s99, rows


@pytest.mark.slow
def test_cpu_costs_measured_beside_other_work_are_returned_marked_and_not_cached(tmp_path, monkeypatch):
    """A cost measured while another process burns a core is inflated (a loaded measurement read send 2-3x a quiet
    one and then skewed every later simulation of that code version): it is returned, marked, and never cached."""
    monkeypatch.setenv("RECMINE_CACHE", str(tmp_path))
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 120\nwhile time.time() < end:\n"
                               "    pass"])
    try:
        cost = measure_cpu(64, puts=20, refresh=True)
    finally:
        burner.kill()
        burner.wait()
    assert "not cached" in cost.source, cost.source
    assert cached_cpu(64) is None and not list(tmp_path.glob("ekko-cpu-*"))


def test_a_round_left_incomplete_waits_for_the_next_change_not_the_whole_round():
    """A compressed stream leaves residuals, so its rounds are incomplete: the Pull then waits for the next round
    or the next change, whichever comes first, as peer.py does (waiting out 500 ms rounds put p50 at ~420 ms)."""
    spec = SimSpec(dcs=2, replicas=1, shards=1, duration_s=1.0, rate=200, batch_every_s=0.1, rtt_ms=40, nic_mbps=100,
                   lan_delay_ms=0.0, warmup_s=0.0, scheduler="slo+fp16", round_ms=500)
    res = Simulation(spec, "ekko", FREE).run()
    assert res["visible"] == res["updates"] > 0
    assert res["p50_s"] < 0.020 + 0.05  # one-way delay (serialisation is microseconds), far below a round
