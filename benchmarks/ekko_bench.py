"""ekko benchmark: update latency across DCs for ekko P2P vs central push vs checkpoint, measured in one run.

Workload (issue defaults): 2 replicas per DC, RTT 50 ms between DCs, 100 Mbit/s egress NIC per PS, a Zipf(1.1)
stream of 2,000 key updates/s of dim 64 written in DC 0. Latency = trainer Put -> visible at the last replica of
the last DC (p50/p99). Floor = one-way delay x WAN hops + one batch's bytes on the busiest NIC / bandwidth.
Usage: python benchmarks/ekko_bench.py [--dcs 2,4,8,16] [--duration 8] [--checkpoint-s 10] [--json]
Every PS is its own process on this machine: at 16 DCs that is 32 PS processes on 2 vCPUs, so CPU contention,
not the WAN, can dominate there — read those rows with that in mind.
"""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from recmine.ekko.bench import BenchSpec, run_bench
from recmine.output import rows_table

console = Console(width=200)


def main(argv: list[str] | None = None) -> None:
    """Run every DC count and print one table of ours vs the baselines with ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dcs", default="2,4,8,16")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--checkpoint-s", type=float, default=10.0)
    ap.add_argument("--modes", default="ekko,push,checkpoint")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.dcs.split(",")):
        spec = BenchSpec(dcs=n, duration_s=args.duration, checkpoint_s=args.checkpoint_s)
        t = time.perf_counter()
        r = run_bench(spec, tuple(args.modes.split(",")), progress=lambda m, n=n: console.print(f"  [{n} DCs] {m}"))
        row = {"dcs": n, "floor_s": r["floor_s"]}
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
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}))
    else:
        console.print(rows_table(rows, title="ekko: update latency (trainer Put -> last replica of last DC)"))


if __name__ == "__main__":
    main()
