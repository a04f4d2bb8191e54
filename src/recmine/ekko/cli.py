"""`recmine ekko`: geo-distributed parameter servers and model updates (ekko)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recmine.output import emit, err_console

if TYPE_CHECKING:
    from recmine.auth import Auth

app = typer.Typer(
    help=(
        "Low-latency model updates across data centres (ekko): local multi-DC clusters over an emulated WAN, "
        "the PyTorch recommender trained, served and guarded across them (run), and the benchmarks: update "
        "latency against central push and checkpoints, the SLO-aware updater, rollback of a harmful update.\n\n"
        "A topology file is JSON, e.g. {\"dcs\": 4, \"replicas\": 2, \"shards\": 2, \"tables\": {\"emb\": 64}, "
        "\"rtt_ms\": 50, \"nic_mbps\": 100, \"topology\": \"mesh\"}."
    ),
    no_args_is_help=True,
)
cluster_app = typer.Typer(help="Start, inspect and stop a local multi-DC cluster (PS processes + WAN emulator).",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
RateOpt = Annotated[float, typer.Option("--rate", help="Key updates per second (Zipf 1.1, dim 64).")]
RttOpt = Annotated[float, typer.Option("--rtt-ms", help="Round-trip time between DCs.")]
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
    from recmine.ekko.lab.cluster import LocalCluster

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

    from recmine.auth import Auth
    from recmine.ekko.lab.cluster import read_state
    from recmine.ekko.ps.client import PSClient

    try:
        st = read_state(state)
    except FileNotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    rows = []
    for n in st["nodes"]:
        try:
            with PSClient(n["address"], timeout=2.0, auth=Auth.from_mapping(st.get("auth"))) as cl:
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
    from recmine.ekko.lab.cluster import stop_detached

    try:
        n = stop_detached(state)
    except FileNotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    emit({"stopped_processes": n}, as_json=as_json, title="ekko cluster down")


def _auth_from_flags(base: Auth, ca: Path | None, cert: Path | None, key: Path | None, token_file: Path | None,
                     insecure: bool) -> Auth:
    """The topology's credentials with the flags given replacing theirs."""
    from recmine.auth import Auth, read_token

    return Auth(str(ca) if ca else base.ca, str(cert) if cert else base.cert, str(key) if key else base.key,
                read_token(token_file) if token_file else base.token, insecure or base.insecure, base.server_name)


CaOpt = Annotated[Path | None, typer.Option("--tls-ca", help="CA certificate (PEM) that signs every server's and "
                                            "client's certificate (mutual TLS).")]
CertOpt = Annotated[Path | None, typer.Option("--tls-cert", help="This server's certificate chain (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="This server's private key (PEM).")]
TokenOpt = Annotated[Path | None, typer.Option("--token-file", help="File holding the bearer token every call must "
                                               "carry.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Serve plaintext on a non-loopback address.")]


@app.command("serve")
def serve(
    topology: Annotated[Path, typer.Option("--topology", "-t", help="Topology JSON naming every server "
                                           "(\"servers\": id, dc, replica, address host:port).")],
    node: Annotated[int, typer.Option("--node", help="Id of the server to run here.")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder for its snapshot and write-ahead "
                                                  "log (none: state is lost on exit).")] = None,
    tls_ca: CaOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    token_file: TokenOpt = None,
    insecure: InsecureOpt = False,
    for_seconds: Annotated[float | None, typer.Option("--for-seconds", help="Stop after this many seconds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run one parameter server of a deployment (one host per server, or several on one host at their own ports):
    it listens on its address, subscribes to its peers at theirs, and serves until Ctrl-C / SIGTERM. Credentials
    (mutual TLS, bearer token) come from the topology's "auth" or the flags; a non-loopback address needs TLS or
    --insecure.

    Example:\n
      recmine ekko serve --topology deploy.json --node 3 --data-dir /var/lib/ekko
    """
    import asyncio
    import sys

    from recmine.auth import Auth
    from recmine.ekko.ps.config import deployment_config, load_topology
    from recmine.ekko.ps.peer import serve as serve_peers

    try:
        topo = load_topology(topology)
        me = next((s for s in topo["servers"] or () if s["id"] == node), {})
        auth = _auth_from_flags(Auth.from_mapping(topo["auth"]).with_identity(me.get("cert"), me.get("key")),
                                tls_ca, tls_cert, tls_key, token_file, insecure)
        cfg = deployment_config(topo, node, data_dir, auth)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    def ready(peers: list) -> None:
        p = peers[0]
        emit({"node": node, "dc": p.cfg.dc, "replica": p.cfg.replica, "address": f"{p.cfg.host}:{p.bound_port}",
              "peers": len(p.cfg.peers), "mode": p.cfg.mode, "tls": auth.tls, "token": bool(auth.token)},
             as_json=as_json, title="ekko serve")
        sys.stdout.flush()

    try:
        asyncio.run(serve_peers([cfg], watch_parent=False, for_seconds=for_seconds, on_ready=ready))
    except OSError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("simulate")
def simulate(
    dcs: Annotated[int, typer.Option("--dcs", help="Number of data centres.")] = 64,
    servers_per_dc: Annotated[int, typer.Option("--servers-per-dc", help="Parameter servers in every DC.")] = 70,
    shards: Annotated[int, typer.Option("--shards", help="Shards (each led by one server per DC).")] = 2,
    duration: Annotated[float, typer.Option("--duration", help="Simulated seconds of update stream.")] = 1.0,
    rate: RateOpt = 2000.0,
    batch_ms: Annotated[float, typer.Option("--batch-ms", help="The trainer writes a batch this often.")] = 100.0,
    rtt_ms: RttOpt = 50.0,
    jitter_ms: Annotated[float, typer.Option("--jitter-ms", help="Std. deviation of the one-way delay.")] = 0.0,
    loss: Annotated[float, typer.Option("--loss", help="Packet loss on WAN links (a loss costs one RTO).")] = 0.0,
    nic_mbps: Annotated[float, typer.Option("--nic-mbps", help="WAN egress bandwidth of every server.")] = 1000.0,
    modes: Annotated[str, typer.Option("--modes", help="Comma list of ekko, push, checkpoint.")] = "ekko,push",
    topo: Annotated[str, typer.Option("--topology", help="mesh or tree (ekko's WAN graph).")] = "mesh",
    cpu: Annotated[str, typer.Option("--cpu", help="measured: per-message CPU costs measured from real server "
                                     "processes (cached; the first run starts a few); defaults: built-in figures; "
                                     "none: free CPU.")] = "measured",
    as_json: JsonOpt = False,
) -> None:
    """Simulate ekko (and the baselines) at production scale: a discrete-event model of the network (per-server NIC
    token bucket, per-DC-pair delay, jitter, loss) and of each server's CPU drives the real protocol core of every
    server. The trainer writes in DC 0 to its first server; latency is Put -> visible at the last server. A run at
    64 DCs x 70 servers takes a few minutes and ~2.5 GB.

    Example:\n
      recmine ekko simulate --dcs 64 --servers-per-dc 70 --json\n
      recmine ekko simulate --dcs 16 --servers-per-dc 4 --modes ekko,push,checkpoint
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recmine.ekko.lab.sim import CpuCost, SimSpec, measure_cpu
    from recmine.ekko.lab.sim import simulate as run_sim

    wanted = tuple(m.strip() for m in modes.split(",") if m.strip())
    problems = [f"unknown mode(s) {sorted(set(wanted) - {'ekko', 'push', 'checkpoint'})}"] if set(wanted) - {
        "ekko", "push", "checkpoint"} else []
    if dcs < 1 or servers_per_dc < 1 or shards < 1 or duration <= 0 or rate <= 0 or batch_ms <= 0:
        problems.append("--dcs, --servers-per-dc, --shards, --duration, --rate and --batch-ms must be positive")
    if not 0 <= loss < 1 or jitter_ms < 0 or nic_mbps <= 0 or rtt_ms < 0:
        problems.append("need 0 <= --loss < 1, --jitter-ms >= 0, --nic-mbps > 0, --rtt-ms >= 0")
    if cpu not in ("measured", "defaults", "none") or topo not in ("mesh", "tree"):
        problems.append("--cpu is measured, defaults or none; --topology is mesh or tree")
    if problems:
        err_console.print(f"[red]error:[/red] {'; '.join(problems)}")
        raise typer.Exit(2)
    spec = SimSpec(dcs=dcs, replicas=servers_per_dc, shards=shards, duration_s=duration, rate=rate,
                   batch_every_s=batch_ms / 1000.0, rtt_ms=rtt_ms, jitter_ms=jitter_ms, loss=loss, nic_mbps=nic_mbps,
                   topology=topo, warmup_s=min(0.5, duration / 2))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  disable=as_json) as bar:
        task = bar.add_task("ekko simulate", total=None)
        if cpu == "measured":
            bar.update(task, description="measuring the real server's CPU costs (cached after the first run)")
            costs = measure_cpu(spec.dim)
        else:
            costs = CpuCost(dim=spec.dim) if cpu == "defaults" else CpuCost(*([0.0] * 11), dim=spec.dim)
        res = run_sim(spec, wanted, costs, progress=lambda msg: bar.update(task, description=msg))
    runs = res.pop("runs")
    res["wall_s"] = sum(r["wall_s"] for r in runs)
    emit(res, as_json=as_json, title=f"ekko simulate: {dcs} DCs x {servers_per_dc} servers")


ScenarioOpt = Annotated[str, typer.Option(
    "--scenario", help="latency: update latency vs push/checkpoint; slo: SLO-aware vs FIFO vs unthrottled under "
    "short links (and with compressed deltas); compress: int8 / fp16 deltas vs float32 rows; rollback: every kind of "
    "harm detected and rolled back.")]
DataOpt = Annotated[str, typer.Option("--data", help="movielens (../shared MovieLens-100K), synthetic, or a .inter "
                                      "file path (slo / compress / rollback / run).")]


@app.command("bench")
def bench(
    scenario: ScenarioOpt = "latency",
    data: DataOpt = "movielens",
    events: Annotated[int, typer.Option("--events", help="Use the first N events (0: all; scenarios).")] = 0,
    replay_s: Annotated[float, typer.Option("--replay-s", help="Replay wall time per run (slo, compress).")] = 20.0,
    link_fraction: Annotated[str, typer.Option(
        "--link-fraction", help="Throttled links: comma list of shares of the bandwidth the update stream needs "
        "(slo).")] = "0.1,0.25,0.5",
    dcs: Annotated[int, typer.Option("--dcs", help="Number of data centres (2 replicas each).")] = 4,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of update stream per mode.")] = 8.0,
    rate: RateOpt = 2000.0,
    rtt_ms: RttOpt = 50.0,
    nic_mbps: Annotated[float, typer.Option("--nic-mbps", help="Egress bandwidth of every PS.")] = 100.0,
    checkpoint_s: Annotated[float, typer.Option("--checkpoint-s", help="Checkpoint baseline period.")] = 10.0,
    modes: Annotated[str, typer.Option("--modes", help="Comma list of ekko, push, checkpoint.")] = "ekko,push,checkpoint",
    harms: Annotated[str, typer.Option("--harms", help="Comma list of harms to inject (rollback): scale50, "
                                       "label_flip, label_flip_unsliced, label_flip_all, nan_rows, exploding_head, stale_replay, "
                                       "stale_replay_unmarked; default all.")] = "",
    colocate: Annotated[int, typer.Option("--colocate", help="Servers of one DC per process (each its own gRPC "
                                          "endpoint; between them the cores talk in memory).")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Update latency (trainer Put -> visible at the last replica of the last DC): ekko P2P vs central push vs
    checkpoint, with WAN bytes per update, the share of updates visible everywhere (the rest count as +inf in
    p50/p99) and ekko's floor (one-way delay x hops + serialisation on the busiest NIC). --scenario slo / compress /
    rollback run the PyTorch recommender on MovieLens-100K (or --data) through real PS processes.

    Example:\n
      recmine ekko bench --dcs 8 --json\n
      recmine ekko bench --scenario slo --data synthetic --json\n
      recmine ekko bench --scenario compress --json\n
      recmine ekko bench --scenario rollback --events 30000 --json
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recmine.ekko.lab.bench import BenchSpec, run_bench

    if dcs < 1:
        err_console.print("[red]error:[/red] --dcs must be >= 1")
        raise typer.Exit(2)
    if scenario not in ("latency", "slo", "compress", "rollback"):
        err_console.print(f"[red]error:[/red] unknown scenario {scenario!r}: latency, slo, compress or rollback")
        raise typer.Exit(2)
    if scenario != "latency":
        _scenario(scenario, data, events, dcs, replay_s, link_fraction, rtt_ms, as_json, harms)
        return
    if colocate < 1:
        err_console.print("[red]error:[/red] --colocate must be >= 1")
        raise typer.Exit(2)
    spec = BenchSpec(dcs=dcs, duration_s=duration, rate=rate, rtt_ms=rtt_ms, nic_mbps=nic_mbps,
                     checkpoint_s=checkpoint_s, colocate=colocate)
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
        emit(res, as_json=True, title="")  # an update never visible makes a percentile +inf: null in JSON
        return
    emit({**res, "runs": runs}, as_json=False, title=f"ekko update latency, {dcs} DCs")


def _scenario(scenario: str, data: str, events: int, dcs: int, replay_s: float, link_fraction: str,
              rtt_ms: float, as_json: bool, harms: str = "") -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recmine.ekko.lab.scenarios import HARMS, ScenarioSpec, run_compress, run_rollback, run_slo

    try:
        fractions = tuple(float(f) for f in link_fraction.split(",") if f.strip())
        if replay_s <= 0 or events < 0:
            raise ValueError("need --replay-s > 0 and --events >= 0")
        spec = ScenarioSpec(data=data, events=events or None, dcs=dcs, replay_s=replay_s, link_fractions=fractions,
                            rtt_ms=rtt_ms)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc} (--link-fraction takes e.g. 0.1,0.25,0.5)")
        raise typer.Exit(2) from None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  disable=as_json) as bar:
        task = bar.add_task(f"ekko {scenario}", total=None)
        try:
            wanted = tuple(h.strip() for h in harms.split(",") if h.strip()) or HARMS
            fn = {"slo": run_slo, "compress": run_compress,
                  "rollback": lambda sp, progress: run_rollback(sp, wanted, progress=progress)}[scenario]
            res = fn(spec, progress=lambda msg: bar.update(task, description=msg))
        except (FileNotFoundError, ValueError) as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    if as_json:
        emit({k: v for k, v in res.items() if k != "runs"}, as_json=True, title="")
        return
    if scenario == "slo":
        rows = [{"link": f"{r['link_fraction']:.0%}", "link_mbps": r["link_mbps"], "SLO AUC": r["slo_aware_quality"],
                 "FIFO AUC": r["fifo_quality"], "SLO+codec AUC": r["slo_compressed_quality"],
                 "gap_closed_pct": 100 * r["gap_closed"], "codec_closed_pct": 100 * r["gap_closed_compressed"]}
                for r in res["fractions"]]
        emit({"unthrottled AUC": res["unthrottled_quality"], "checkpoint-only AUC": res["checkpoint_quality"],
              "codec": res["compression"], "metric": res["metric"], "links": rows}, as_json=False,
             title=f"ekko SLO-aware updater ({res['data']}, {dcs} DCs)")
    elif scenario == "compress":
        rows = [{"rows as": name, "far AUC": r["auc"], "WAN_per_update_bytes": r["wan_bytes_per_update"],
                 "fewer_bytes_x": r["bytes_ratio"], "AUC change": r["auc_delta"]} for name, r in res["wide_link"].items()]
        emit({"wide link": rows, "significance": res["significance"]}, as_json=False,
             title=f"ekko compressed deltas ({res['data']}, {dcs} DCs)")
    else:
        rows = [{"harm": name, "detected by": h["detected_by"] or "not detected", "detect_s": h["detect_s"],
                 "windows": h["windows_to_detect"], "rollback_s": h["rollback_s"], "AUC after": h["quality_after"],
                 "clean AUC": h["clean_quality_same_windows"], "rollback held": h["rollback_held"]}
                for name, h in res["harms"].items()]
        emit({"false rollbacks (clean run)": res["clean"]["false_rollbacks"], "metric": res["metric"],
              "harms": rows}, as_json=False, title=f"ekko guard ({res['data']}, {dcs} DCs)")


@app.command("run")
def run(
    topology: Annotated[Path | None, typer.Option("--topology", "-t", help="Topology JSON (tables are set by the "
                                                  "model).")] = None,
    data: DataOpt = "synthetic",
    events: Annotated[int, typer.Option("--events", help="Use the first N events (0: all).")] = 0,
    replay_s: Annotated[float, typer.Option("--replay-s", help="Wall time to replay the stream over.")] = 30.0,
    inject_bad_update: Annotated[int, typer.Option(
        "--inject-bad-update", help="Batch at which a faulty trainer (updates x50) starts; -1: none.")] = -1,
    as_json: JsonOpt = False,
) -> None:
    """Run trainer, cluster and serving together: the PyTorch recommender trains on the stream in DC 0, every DC
    serves from its own parameter servers, the model state manager watches the farthest DC. Shows per-DC quality
    (AUC, logloss over recent requests) and the age of the parameters served, live.

    Example:\n
      recmine ekko run --data movielens --inject-bad-update 150
    """
    from rich.live import Live
    from rich.table import Table

    from recmine.ekko.lab.cluster import load_topology
    from recmine.ekko.lab.scenarios import ScenarioSpec, run_live

    try:
        topo = load_topology(topology) if topology else None
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if topo is not None:
        topo.pop("tables", None)
    spec = ScenarioSpec(data=data, events=events or None, replay_s=replay_s,
                        dcs=topo["dcs"] if topo else 4)

    def render(tick: dict) -> Table:
        t = Table(title=f"ekko run: batch {tick['batch']}/{tick['batches']}, {tick['t_s']:.1f} s"
                        + (" [red](faulty trainer)[/red]" if tick["faulty"] else ""))
        for col in ("DC", "AUC", "logloss", "param age p50 (ms)", "events"):
            t.add_column(col, justify="right")
        for r in tick["dcs"]:
            t.add_row(r["dc"], f"{r['auc']:.4f}", f"{r['logloss']:.4f}", f"{r['age_p50_ms']:.0f}", str(r["events"]))
        for e in tick["events"][-3:]:
            t.caption = (t.caption + "\n" if t.caption else "") + f"{e['t_s']:.1f} s: {e['event']}"
        return t

    try:
        if as_json:
            res = run_live(spec, topo, inject_bad_update if inject_bad_update >= 0 else None)
        else:
            with Live(console=err_console, refresh_per_second=4) as live:
                res = run_live(spec, topo, inject_bad_update if inject_bad_update >= 0 else None,
                               on_tick=lambda tick: live.update(render(tick)))
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    emit(res, as_json=as_json, title="ekko run")
