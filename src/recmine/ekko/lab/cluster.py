"""Start a local multi-data-centre ekko cluster from a topology file: PS processes and a WAN emulator on 127.0.0.1.

Topology (JSON): {"dcs": 4, "replicas": 2, "shards": 2, "tables": {"emb": 64}, "rtt_ms": 50, "nic_mbps": 100,
"mode": "ekko"|"push"|"checkpoint", "topology": "mesh"|"tree", "pull_interval_ms": 0 (or {"<dc>": ms}),
"wait_ms": 1000, "checkpoint_s": 10, "origin_dc": 0, "delays_ms": {"0,1": 30}, "wal": false,
"scheduler": "all"|"slo"|"fifo" (WAN sends through a byte budget of scheduler_share * nic_mbps; "+int8" / "+fp16"
compresses them, e.g. "slo+int8", see ps/compress.py), "round_ms": 50}"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recmine.ekko.lab.wan import Route, control
from recmine.ekko.ps.client import PSClient
from recmine.ekko.ps.compress import parse_scheduler
from recmine.ekko.ps.config import PeerConfig, PeerInfo

DEFAULTS: dict[str, Any] = {
    "dcs": 2, "replicas": 2, "shards": 2, "tables": {"emb": 64}, "rtt_ms": 50.0, "nic_mbps": 100.0,
    "mode": "ekko", "topology": "mesh", "pull_interval_ms": 0.0, "wait_ms": 1000, "checkpoint_s": 10.0,
    "origin_dc": 0, "delays_ms": {}, "wal": False, "snapshot_every_s": 0.0, "log_applies": False,
    "scheduler": "all", "scheduler_share": 0.9, "round_ms": 50.0, "traffic_half_life_s": 30.0,
}


def load_topology(spec: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A validated topology: defaults filled in; ValueError naming a bad field."""
    if isinstance(spec, dict):
        data = dict(spec)
    else:
        p = Path(spec)
        if not p.exists():
            raise FileNotFoundError(f"topology file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc})") from None
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown topology field(s): {sorted(unknown)}")
    topo = {**DEFAULTS, **data}
    for key in ("dcs", "replicas", "shards"):
        if not isinstance(topo[key], int) or topo[key] < 1:
            raise ValueError(f"topology field {key!r} must be a positive integer, got {topo[key]!r}")
    if topo["mode"] not in ("ekko", "push", "checkpoint"):
        raise ValueError(f"topology mode must be ekko, push or checkpoint, got {topo['mode']!r}")
    if topo["topology"] not in ("mesh", "tree"):
        raise ValueError(f"topology must be mesh or tree, got {topo['topology']!r}")
    if topo["nic_mbps"] <= 0 or topo["rtt_ms"] < 0:
        raise ValueError("nic_mbps must be > 0 and rtt_ms >= 0")
    if topo["scheduler"] != "all" and parse_scheduler(topo["scheduler"])[0] not in ("slo", "fifo"):  # codec checked
        raise ValueError(f"topology scheduler must be all, slo or fifo (+fp16 / +int8), got {topo['scheduler']!r}")
    if not 0 < topo["scheduler_share"] <= 1 or topo["round_ms"] <= 0:
        raise ValueError("scheduler_share must be in (0, 1] and round_ms > 0")
    if not topo["traffic_half_life_s"] > 0:
        raise ValueError(f"traffic_half_life_s must be > 0, got {topo['traffic_half_life_s']!r}")
    if not 0 <= topo["origin_dc"] < topo["dcs"]:
        raise ValueError(f"origin_dc {topo['origin_dc']} outside 0..{topo['dcs'] - 1}")
    return topo


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class Node:
    """One PS process of the cluster."""

    node_id: int
    dc: int
    replica: int
    port: int
    config_path: Path
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """Direct address (clients in the same DC use it)."""
        return f"127.0.0.1:{self.port}"


class LocalCluster:
    """Separate OS processes for every PS plus one WAN emulator; a context manager that always cleans up."""

    def __init__(self, topology: str | os.PathLike[str] | dict[str, Any], run_dir: str | os.PathLike[str] | None = None,
                 detached: bool = False) -> None:
        self.topo = load_topology(topology)
        self._tmp = None if run_dir else tempfile.TemporaryDirectory(prefix="ekko-")
        self.run_dir = Path(run_dir) if run_dir else Path(self._tmp.name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.detached = detached
        self.nodes: list[Node] = []
        self.wan_proc: subprocess.Popen | None = None
        self.control_port = 0

    # ---- lifecycle
    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Write configs, launch the WAN emulator and every PS, wait until all answer Health."""
        t = self.topo
        n = t["dcs"] * t["replicas"]
        cross = [(a, b) for a in range(n) for b in range(n)
                 if a // t["replicas"] != b // t["replicas"]]
        ports = _free_ports(n + len(cross) + 1)
        ps_ports, proxy_ports, self.control_port = ports[:n], ports[n:n + len(cross)], ports[-1]
        proxy_of = dict(zip(cross, proxy_ports, strict=True))
        routes = [Route(proxy_of[(a, b)], a, a // t["replicas"], b, b // t["replicas"], ps_ports[b])
                  for a, b in cross]
        delays = {}
        for a in range(t["dcs"]):
            for b in range(t["dcs"]):
                if a != b:
                    ms = t["delays_ms"].get(f"{a},{b}", t["delays_ms"].get(f"{b},{a}", t["rtt_ms"] / 2))
                    delays[f"{a},{b}"] = ms / 1000.0
        spec = {"routes": [r.__dict__ for r in routes], "delay_s": delays,
                "nic_bps": {str(i): t["nic_mbps"] * 1e6 for i in range(n)}, "control_port": self.control_port}
        (self.run_dir / "wan.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        if self.detached:
            env["RECMINE_EKKO_DETACHED"] = "1"
        self.nodes = []
        (self.run_dir / "go").unlink(missing_ok=True)
        for i in range(n):
            dc, rep = divmod(i, t["replicas"])
            peers = []
            for j in range(n):
                if j == i:
                    continue
                jdc, jrep = divmod(j, t["replicas"])
                addr = f"127.0.0.1:{ps_ports[j]}" if jdc == dc else f"127.0.0.1:{proxy_of[(i, j)]}"
                peers.append(PeerInfo(j, jdc, jrep, addr))
            pim = t["pull_interval_ms"]
            interval = float(pim.get(str(dc), 0.0)) if isinstance(pim, dict) else float(pim)
            cfg = PeerConfig(node_id=i, dc=dc, replica=rep, port=ps_ports[i], tables=dict(t["tables"]),
                             num_shards=t["shards"], num_dcs=t["dcs"], replicas_per_dc=t["replicas"], peers=peers,
                             mode=t["mode"], topology=t["topology"], pull_interval_ms=interval,
                             wait_ms=int(t["wait_ms"]), origin_dc=t["origin_dc"], checkpoint_s=float(t["checkpoint_s"]),
                             snapshot_path=str(self.run_dir / f"ps{i}.snap.npz"),
                             snapshot_every_s=float(t["snapshot_every_s"]),
                             wal_path=str(self.run_dir / f"ps{i}.wal") if t["wal"] else None,
                             log_applies=bool(t["log_applies"]), go_file=str(self.run_dir / "go"),
                             scheduler=t["scheduler"], round_ms=float(t["round_ms"]),
                             traffic_half_life_s=float(t["traffic_half_life_s"]),
                             link_bytes_per_s=t["nic_mbps"] * 1e6 / 8 * t["scheduler_share"])
            path = self.run_dir / f"ps{i}.json"
            cfg.to_json(path)
            self.nodes.append(Node(i, dc, rep, ps_ports[i], path))
        try:
            self.wan_proc = self._spawn(["-m", "recmine.ekko.lab.wan", str(self.run_dir / "wan.json"),
                                         str(self.run_dir / "wan.ready")], env, "wan")
            for node in self.nodes:
                node.proc = self._spawn_node(node, env)
            self._wait_ready(timeout)
            (self.run_dir / "go").write_text("all peers are up")
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def _spawn(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=self.detached)
        finally:
            log.close()

    def _spawn_node(self, node: Node, env: dict[str, str] | None = None) -> subprocess.Popen:
        ready = self.run_dir / f"ps{node.node_id}.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        env = env or dict(os.environ)
        return self._spawn(["-m", "recmine.ekko.ps.peer", str(node.config_path), str(ready)], env, f"ps{node.node_id}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {"wan": self.run_dir / "wan.ready", **{f"ps{n.node_id}": self.run_dir / f"ps{n.node_id}.ready"
                                                          for n in self.nodes}}
        while pending:
            for name, path in list(pending.items()):
                if path.exists():
                    del pending[name]
            for proc, name in [(self.wan_proc, "wan"), *[(n.proc, f"ps{n.node_id}") for n in self.nodes]]:
                if proc is not None and proc.poll() is not None:
                    tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ready after {timeout:.0f}s: waiting for {sorted(pending)}")
            time.sleep(0.05)

    def _write_state(self) -> None:
        state = {"pids": {f"ps{n.node_id}": n.proc.pid for n in self.nodes if n.proc},
                 "wan_pid": self.wan_proc.pid if self.wan_proc else None, "control_port": self.control_port,
                 "nodes": [{"node_id": n.node_id, "dc": n.dc, "replica": n.replica, "address": n.address}
                           for n in self.nodes]}
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=1))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process, SIGKILL what is left after `grace` seconds."""
        procs = [n.proc for n in self.nodes if n.proc is not None]
        if self.wan_proc is not None:
            procs.append(self.wan_proc)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for n in self.nodes:
            n.proc = None
        self.wan_proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        return self.start() if self.wan_proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- faults and inspection
    def kill(self, node_id: int) -> None:
        """SIGKILL one PS (a crash)."""
        proc = self.nodes[node_id].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self, node_id: int, timeout: float = 30.0) -> None:
        """Start a killed PS again with the same config (it reloads its snapshot/WAL and catches up from peers)."""
        node = self.nodes[node_id]
        node.proc = self._spawn_node(node)
        ready = self.run_dir / f"ps{node_id}.ready"
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ps{node_id} did not restart")
            time.sleep(0.05)

    def partition(self, dc: int, on: bool = True) -> None:
        """Cut DC `dc` off the WAN (on=True) or heal it."""
        control(self.control_port, {"op": "partition", "dc": dc, "on": on})

    def wan_bytes(self, reset: bool = False) -> dict[str, int]:
        """Bytes carried per directed DC link "a,b" since the last reset."""
        out = control(self.control_port, {"op": "stats"})["bytes"]
        if reset:
            control(self.control_port, {"op": "reset"})
        return out

    def client(self, node_id: int, timeout: float = 5.0) -> PSClient:
        """A client of one PS (direct, as a trainer or inference server in its DC would be)."""
        return PSClient(self.nodes[node_id].address, timeout)

    def node(self, dc: int, replica: int = 0) -> Node:
        """The PS with this DC and replica index."""
        return self.nodes[dc * self.topo["replicas"] + replica]


def read_state(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The state file of a detached cluster (`recmine ekko cluster up`)."""
    p = Path(run_dir) / "state.json"
    if not p.exists():
        raise FileNotFoundError(f"no cluster state in {run_dir} (is a cluster up there?)")
    return json.loads(p.read_text())


def stop_detached(run_dir: str | os.PathLike[str], grace: float = 5.0) -> int:
    """Stop a detached cluster from its state file; returns how many processes were signalled."""
    state = read_state(run_dir)
    pids = [*state["pids"].values(), state.get("wan_pid")]
    pids = [p for p in pids if p]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    (Path(run_dir) / "state.json").unlink(missing_ok=True)
    return len(pids)
