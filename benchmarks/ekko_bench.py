"""ekko benchmark: update latency across DCs for ekko P2P vs central push vs checkpoint, measured in one run.

Workload (issue defaults): 2 replicas per DC, RTT 50 ms between DCs, 100 Mbit/s egress NIC per PS, a Zipf(1.1)
stream of 2,000 key updates/s of dim 64 written in DC 0. Latency = trainer Put -> visible at the last replica of
the last DC (p50/p99); an update never visible counts as +inf, and each mode reports the share visible. Floor (of
ekko) = one-way delay x WAN hops + serialisation of one batch on the busiest NIC. Central push is a streaming
broadcaster (many Applies in flight per destination, retried until acknowledged).
Usage: python benchmarks/ekko_bench.py [--dcs 2,4,8,16] [--duration 8] [--checkpoint-s 10] [--json]
       python benchmarks/ekko_bench.py --scenario model|slo|compress|rollback [--data movielens|synthetic] [--repeats 5]
                                       [--batches 250,10]
                                       [--out runs.json] [--json]
Scenario model: the recommender's prequential AUC, HR@10 and NDCG@10 beside popularity (targets: HR@10 >= 1.2x
and AUC >= +0.07 on MovieLens-100K), for the default trainer (users read with their request context), the same
by id rows alone (context=0, the default before) and FRESH_RANKING, at each --batches (events between published
updates; default 250,10). Scenario slo: MovieLens-100K (or the drifting synthetic stream) replayed over
20 s into 4 DCs with the PyTorch two-tower recommender; the WAN links carry 10%, 25% and 50% of what the update
stream needs. Far-DC serving AUC (each event scored before training on it) with the SLO-aware updater vs FIFO vs an
unthrottled link vs checkpoints only, and SLO-aware with int8 deltas; target: SLO-aware closes >= 50% of the
FIFO -> unthrottled gap (median of the repeats, spread = min..max). Scenario compress: WAN bytes per row update
and AUC of float32 rows vs int8 / fp16 deltas on a wide link (target >= 4x fewer bytes at AUC within 0.002).
Scenario rollback: each kind of harm injected into the trainer's stream: detection delay, rollback time in every
DC, false rollbacks on a clean stream of the same length, quality after.
Every PS is its own process on this machine: at 16 DCs that is 32 PS processes on 2 vCPUs, so CPU contention,
not the WAN, can dominate there — read those rows with that in mind. By default the two servers of a DC share a
process (--colocate 2: each still its own gRPC endpoint for clients and other DCs, between them the protocol
cores talk in memory); --colocate 1 gives every server its own process.
--simulate: the same protocol core in the discrete-event simulator (recmine.ekko.lab.sim) at 4, 16, 64 and 256
DCs: 4 servers per DC, 2 shards, 1 Gbit/s WAN NIC per server, the 2,000 keys/s stream in 100 ms batches written in
DC 0, each server's CPU charged what real PS processes spend per message (measured first, cached). Targets: ekko
p50 <= 1.3x floor at every size; at 64 DCs central push p99 >= 5x ekko's; WAN bytes <= 1.2x ideal; checkpoint
>= 10x ekko.
Usage: python benchmarks/ekko_bench.py --simulate [--dcs 4,16,64,256] [--servers-per-dc 4] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from rich.console import Console

from recmine.ekko.lab.bench import BenchSpec, run_bench
from recmine.output import emit, rows_table

console = Console(width=200)
log = Console(stderr=True, width=200)  # progress and per-run lines: stdout stays one JSON object with --json


def main(argv: list[str] | None = None) -> None:
    """Run every DC count and print one table of ours vs the baselines with ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dcs", default="2,4,8,16")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--checkpoint-s", type=float, default=10.0)
    ap.add_argument("--modes", default="ekko,push,checkpoint")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--scenario", choices=["latency", "model", "slo", "compress", "rollback"], default="latency")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="scenarios: write every run's JSON and the summary here")
    ap.add_argument("--data", default="movielens")
    ap.add_argument("--batches", default="250,10", help="model: events per published update, comma-separated")
    ap.add_argument("--traffic-half-life", type=float, default=30.0,
                    help="slo: seconds over which the scheduler forgets which keys inference reads")
    ap.add_argument("--simulate", action="store_true", help="run the discrete-event simulator instead")
    ap.add_argument("--servers-per-dc", type=int, default=4)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--nic-mbps", type=float, default=None)
    ap.add_argument("--batch-ms", type=float, default=None)
    ap.add_argument("--colocate", type=int, default=2, help="real cluster: servers of a DC per process (each its own "
                    "endpoint; between them the cores talk in memory)")
    args = ap.parse_args(argv)
    if args.scenario == "model":
        model_quality(args)
        return
    if args.scenario != "latency":
        scenario(args)
        return
    if args.simulate:
        simulate(args)
        return
    rows = []
    for n in (int(x) for x in args.dcs.split(",")):
        spec = BenchSpec(dcs=n, duration_s=args.duration, checkpoint_s=args.checkpoint_s, colocate=args.colocate)
        t = time.perf_counter()
        r = run_bench(spec, tuple(args.modes.split(",")), progress=lambda m, n=n: log.print(f"  [{n} DCs] {m}"))
        row = {"dcs": n, "floor_s": r["floor_s"]}
        for m in args.modes.split(","):  # share of updates visible everywhere; the rest are +inf in p50/p99
            row[f"{m}_visible"] = r[f"{m}_visible"] / max(1, r[f"{m}_updates"])
        if "ekko_p50_s" in r:
            row.update(ekko_p50_s=r["ekko_p50_s"], ekko_p99_s=r["ekko_p99_s"],
                       **{"ekko_p50/floor": r["ekko_p50_s"] / r["floor_s"]},
                       wan_B_per_update=r["wan_bytes_per_update"],
                       **{"wan/ideal": r["wan_bytes_per_update"] / r["wan_bytes_ideal_per_update"]})
        if "push_p50_s" in r:
            row.update(push_p50_s=r["push_p50_s"], push_p99_s=r["push_p99_s"])
            if "ekko_p99_s" in r:
                row["push_p99/ekko_p99"] = r["push_p99_s"] / r["ekko_p99_s"]
        if "checkpoint_p50_s" in r:
            row["checkpoint_p50_s"] = r["checkpoint_p50_s"]
            if "ekko_p50_s" in r:
                row["ckpt/ekko_p50"] = r["checkpoint_p50_s"] / r["ekko_p50_s"]
        row["bench_s"] = time.perf_counter() - t
        rows.append(row)
    if args.json:
        emit({"date": time.strftime("%Y-%m-%d"), "rows": rows}, as_json=True, title="")  # +inf prints as null
    else:
        console.print(rows_table(rows, title="ekko: update latency (trainer Put -> last replica of last DC)"))


def simulate(args: argparse.Namespace) -> None:
    """The scale table from the simulator: one row per DC count, ours vs the baselines with ratios."""
    from recmine.ekko.lab.sim import SimSpec, measure_cpu, scale_rows

    dcs = [int(x) for x in (args.dcs if args.dcs != "2,4,8,16" else "4,16,64,256").split(",")]
    base = SimSpec(replicas=args.servers_per_dc, shards=args.shards, nic_mbps=args.nic_mbps or 1000.0,
                   batch_every_s=(args.batch_ms or 100.0) / 1000.0, duration_s=args.duration if args.duration != 8.0
                   else 1.5, checkpoint_s=args.checkpoint_s)
    cpu = measure_cpu(base.dim)
    log.print(f"CPU costs per message (s): send {cpu.send_msg:.2e}, shared send {cpu.shared_msg:.2e}, "
                  f"receive {cpu.recv_msg:.2e}, put {cpu.put_msg:.2e} ({cpu.source})")
    rows = scale_rows(dcs, base, tuple(args.modes.split(",")), cpu,
                      progress=lambda m: log.print(f"  {m}") if "simulated" not in m else None)
    if args.json:
        emit({"date": time.strftime("%Y-%m-%d"), "spec": dataclasses.asdict(base), "cpu": cpu.to_json(), "rows": rows},
             as_json=True, title="")
    else:
        keep = ("dcs", "servers", "floor_s", "ekko_p50_s", "ekko_p99_s", "ekko_p50/floor", "push_p50_s", "push_p99_s",
                "push_p99/ekko_p99", "checkpoint_p50_s", "ckpt/ekko_p50", "wan/ideal", "push_origin_nic_util",
                "wall_s")
        console.print(rows_table([{k: r[k] for k in keep if k in r} for r in rows],
                                 title="ekko at scale (simulated): update latency, trainer Put -> last server"))


def model_quality(args: argparse.Namespace) -> None:
    """The recommender on the prequential replay (rec/evaluate.py), seeds 0..repeats-1: AUC, HR@10, NDCG@10 beside
    popularity, per trainer (the defaults, id rows alone, and FRESH_RANKING) and per batch (events between published
    updates)."""
    from recmine.ekko.lab.scenarios import ScenarioSpec, load_data
    from recmine.ekko.rec.evaluate import prequential
    from recmine.ekko.rec.model import FRESH_RANKING, OnlineTrainer

    data = load_data(ScenarioSpec(data=args.data))
    rows = []
    for batch in (int(x) for x in args.batches.split(",")):
        for name, kw in (("default", {}), ("id_rows", {"context": 0}), ("fresh_ranking", FRESH_RANKING)):
            runs = [prequential(data, OnlineTrainer(seed=seed, **kw), batch=batch, seed=seed).as_dict()
                    for seed in range(args.repeats)]
            rows.append({"trainer": name, "batch": batch,
                         **{k: _median_spread([r[k] for r in runs])
                            for k in ("auc", "popularity_auc", "auc_gain", "hr", "popularity_hr", "hr_ratio",
                                      "ndcg", "popularity_ndcg", "cold_share")}})
    summary = {"date": time.strftime("%Y-%m-%d"), "scenario": "model", "data": data.source, "events": len(data),
               "rows": rows}
    if args.json:
        print(json.dumps(summary))
    else:
        console.print_json(json.dumps(summary))


def _median_spread(vals: list[float]) -> dict[str, float]:
    """Median, min and max over the runs with a number (a NaN, e.g. no FIFO gap to close, is counted apart)."""
    import math
    import statistics

    ok = [v for v in vals if v is not None and not math.isnan(v)]
    if not ok:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "runs": 0, "undefined": len(vals)}
    return {"median": statistics.median(ok), "min": min(ok), "max": max(ok), "runs": len(ok),
            "undefined": len(vals) - len(ok)}


def scenario(args: argparse.Namespace) -> None:
    """Repeat the slo, compress or rollback scenario; print each run and the medians with their spread."""
    from recmine.ekko.lab.scenarios import ScenarioSpec, run_compress, run_rollback, run_slo

    runs = []
    for rep in range(args.repeats):
        spec = ScenarioSpec(data=args.data, seed=rep, traffic_half_life_s=args.traffic_half_life)
        fn = {"slo": run_slo, "compress": run_compress, "rollback": run_rollback}[args.scenario]
        r = fn(spec, progress=lambda m, rep=rep: log.print(f"  [{rep}] {m}") if "batch 0/" in m else None)
        r.pop("runs", None)
        runs.append(r)
        log.print({k: v for k, v in r.items() if k not in ("spec", "windows", "harms")})
    summary: dict = {"date": time.strftime("%Y-%m-%d"), "scenario": args.scenario, "data": args.data,
                     "repeats": args.repeats}
    if args.scenario == "slo":
        rows = []
        for i, f in enumerate(runs[0]["spec"]["link_fractions"]):
            fr = [r["fractions"][i] for r in runs]
            row = {"link": f}
            for key in ("slo_aware_quality", "fifo_quality", "slo_compressed_quality", "gap_closed",
                        "gap_closed_compressed"):
                row[key] = _median_spread([x[key] for x in fr])
            rows.append(row)
        summary.update(unthrottled=_median_spread([r["unthrottled_quality"] for r in runs]),
                       checkpoint=_median_spread([r["checkpoint_quality"] for r in runs]),
                       fresh_minus_checkpoint=_median_spread([r["fresh_minus_checkpoint"] for r in runs]),
                       fractions=rows)
    elif args.scenario == "compress":
        summary["wide_link"] = {name: {k: _median_spread([r["wide_link"][name][k] for r in runs])
                                       for k in ("auc", "wan_bytes_per_update", "bytes_ratio", "auc_delta")}
                                for name in runs[0]["wide_link"]}
    else:
        summary["harms"] = {}
        for name in runs[0]["harms"]:
            hs = [r["harms"][name] for r in runs]
            row: dict = {"detected": sum(bool(h["detected"]) for h in hs)}
            for k in ("detect_s", "rollback_s", "quality_after", "served_bad_rows"):
                vals = [h[k] for h in hs if isinstance(h.get(k), (int, float)) and not isinstance(h.get(k), bool)]
                if vals:
                    row[k] = _median_spread(vals)
            summary["harms"][name] = row
        summary["false_rollbacks_clean"] = [r["clean"]["false_rollbacks"] for r in runs]
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "runs": runs}, fh, default=str)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        console.print_json(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
