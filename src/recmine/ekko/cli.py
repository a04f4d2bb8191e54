"""`recmine ekko`: geo-distributed parameter servers and model updates (ekko)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recmine.output import emit, err_console

app = typer.Typer(
    help=(
        "Low-latency model updates across data centres (ekko): local multi-DC clusters over an emulated WAN, "
        "and the update-latency benchmark against central push and checkpoints.\n\n"
        "A topology file is JSON, e.g. {\"dcs\": 4, \"replicas\": 2, \"shards\": 2, \"tables\": {\"emb\": 64}, "
        "\"rtt_ms\": 50, \"nic_mbps\": 100, \"topology\": \"mesh\"}."
    ),
    no_args_is_help=True,
)
cluster_app = typer.Typer(help="Start, inspect and stop a local multi-DC cluster (PS processes + WAN emulator).",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
StateOpt = Annotated[Path, typer.Option("--state", help="Folder holding the cluster's configs, logs and state.")]


@cluster_app.command("up")
def cluster_up(
    topology: Annotated[Path, typer.Option("--topology", "-t", help="Topology JSON file.")],
    state: StateOpt = Path(".ekko-cluster"),
    as_json: JsonOpt = False,
) -> None:
    """Start the cluster in the background and return; `down` stops it.

    Example:\n
      recmine ekko cluster up --topology topo.json && recmine ekko cluster status
    """
    from recmine.ekko.cluster import LocalCluster

    if (state / "state.json").exists():
        err_console.print(f"[red]error:[/red] a cluster is already up in {state} (run `recmine ekko cluster down`)")
        raise typer.Exit(2)
    try:
        c = LocalCluster(topology, run_dir=state, detached=True).start()
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    nodes = [{"node": n.node_id, "dc": n.dc, "replica": n.replica, "address": n.address} for n in c.nodes]
    emit({"state": str(state), "processes": len(nodes) + 1, "nodes": nodes}, as_json=as_json, title="ekko cluster up")


@cluster_app.command("status")
def cluster_status(state: StateOpt = Path(".ekko-cluster"), as_json: JsonOpt = False) -> None:
    """Health of every PS of the cluster in --state.

    Example:\n
      recmine ekko cluster status --json
    """
    import grpc

    from recmine.ekko.client import PSClient
    from recmine.ekko.cluster import read_state

    try:
        st = read_state(state)
    except FileNotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    rows = []
    for n in st["nodes"]:
        try:
            with PSClient(n["address"], timeout=2.0) as cl:
                h = cl.health()
            rows.append({**n, "status": h["status"], "keys": h["keys"], "mode": h["mode"]})
        except grpc.RpcError as exc:
            rows.append({**n, "status": f"DOWN ({exc.code().name})", "keys": 0, "mode": ""})
    emit({"nodes": rows}, as_json=as_json, title="ekko cluster status")


@cluster_app.command("down")
def cluster_down(state: StateOpt = Path(".ekko-cluster"), as_json: JsonOpt = False) -> None:
    """Stop the cluster in --state (SIGTERM, then SIGKILL after 5 s).

    Example:\n
      recmine ekko cluster down
    """
    from recmine.ekko.cluster import stop_detached

    try:
        n = stop_detached(state)
    except FileNotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    emit({"stopped_processes": n}, as_json=as_json, title="ekko cluster down")


@app.command("bench")
def bench(
    dcs: Annotated[int, typer.Option("--dcs", help="Number of data centres (2 replicas each).")] = 4,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of update stream per mode.")] = 8.0,
    rate: Annotated[float, typer.Option("--rate", help="Key updates per second (Zipf 1.1, dim 64).")] = 2000.0,
    rtt_ms: Annotated[float, typer.Option("--rtt-ms", help="Round-trip time between DCs.")] = 50.0,
    nic_mbps: Annotated[float, typer.Option("--nic-mbps", help="Egress bandwidth of every PS.")] = 100.0,
    checkpoint_s: Annotated[float, typer.Option("--checkpoint-s", help="Checkpoint baseline period.")] = 10.0,
    modes: Annotated[str, typer.Option("--modes", help="Comma list of ekko, push, checkpoint.")] = "ekko,push,checkpoint",
    as_json: JsonOpt = False,
) -> None:
    """Update latency (trainer Put -> visible at the last replica of the last DC): ekko P2P vs central push vs
    checkpoint, with WAN bytes per update and the physical floor.

    Example:\n
      recmine ekko bench --dcs 8 --json
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recmine.ekko.bench import BenchSpec, run_bench

    if dcs < 1:
        err_console.print("[red]error:[/red] --dcs must be >= 1")
        raise typer.Exit(2)
    spec = BenchSpec(dcs=dcs, duration_s=duration, rate=rate, rtt_ms=rtt_ms, nic_mbps=nic_mbps,
                     checkpoint_s=checkpoint_s)
    wanted = tuple(m.strip() for m in modes.split(",") if m.strip())
    bad = [m for m in wanted if m not in ("ekko", "push", "checkpoint")]
    if bad:
        err_console.print(f"[red]error:[/red] unknown mode(s) {bad}")
        raise typer.Exit(2)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  disable=as_json) as bar:
        task = bar.add_task("ekko bench", total=None)
        res = run_bench(spec, wanted, progress=lambda msg: bar.update(task, description=msg))
    runs = res.pop("runs")
    if as_json:
        print(json.dumps(res))
        return
    emit({**res, "runs": runs}, as_json=False, title=f"ekko update latency, {dcs} DCs")
