"""Start a local multi-data-centre ekko cluster from a topology file: PS processes and a WAN emulator on 127.0.0.1.

Topology (JSON): {"dcs": 4, "replicas": 2, "shards": 2, "tables": {"emb": 64}, "rtt_ms": 50, "nic_mbps": 100,
"mode": "ekko"|"push"|"checkpoint", "topology": "mesh"|"tree", "pull_interval_ms": 0 (or {"<dc>": ms}),
"wait_ms": 1000, "checkpoint_s": 10, "origin_dc": 0, "delays_ms": {"0,1": 30}, "wal": false,
"scheduler": "all"|"slo"|"fifo" (WAN sends through a byte budget of scheduler_share * nic_mbps; "+int8" / "+fp16"
compresses them, e.g. "slo+int8", see ps/compress.py), "round_ms": 50,
"colocate": 1 (servers of one DC per process, each its own endpoint; between them the cores talk in memory),
"auth": {"ca", "cert", "key", "token_file"} (mutual TLS and a bearer token on every server and client)}.
A topology that names its servers ("servers") is a deployment: `recmine ekko serve` runs each (ps/config.py)."""

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

from recmine.auth import Auth
from recmine.ekko.lab.wan import Route, control
from recmine.ekko.ps.client import PSClient
from recmine.ekko.ps.config import PeerConfig, PeerInfo, common_fields, load_topology


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (free when asked: bind them soon)."""
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
        if self.topo["servers"]:
            raise ValueError("this topology names its servers (a deployment): start each with `recmine ekko serve "
                             "--topology F --node ID`; the local launcher places servers itself")
        self.auth = Auth.from_mapping(self.topo["auth"])
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
        ports = free_ports(n + len(cross) + 1)
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
            cfg = PeerConfig(node_id=i, dc=dc, replica=rep, port=ps_ports[i], peers=peers, pull_interval_ms=interval,
                             snapshot_path=str(self.run_dir / f"ps{i}.snap.npz"),
                             wal_path=str(self.run_dir / f"ps{i}.wal") if t["wal"] else None,
                             go_file=str(self.run_dir / "go"), **common_fields(t))
            path = self.run_dir / f"ps{i}.json"
            cfg.to_json(path)
            self.nodes.append(Node(i, dc, rep, ps_ports[i], path))
        try:
            self.wan_proc = self._spawn(["-m", "recmine.ekko.lab.wan", str(self.run_dir / "wan.json"),
                                         str(self.run_dir / "wan.ready")], env, "wan")
            for group in self.groups():
                self._spawn_group(group, env)
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

    def groups(self) -> list[list[Node]]:
        """The servers that share a process: up to `colocate` servers of one DC each (each its own gRPC endpoint)."""
        k = self.topo["colocate"]
        out: list[list[Node]] = []
        for dc in range(self.topo["dcs"]):
            members = [n for n in self.nodes if n.dc == dc]
            out += [members[i:i + k] for i in range(0, len(members), k)]
        return out

    def _group_of(self, node_id: int) -> list[Node]:
        return next(g for g in self.groups() if any(n.node_id == node_id for n in g))

    def _spawn_group(self, group: list[Node], env: dict[str, str] | None = None) -> None:
        args = ["-m", "recmine.ekko.ps.peer"]
        for node in group:
            ready = self.run_dir / f"ps{node.node_id}.ready"
            with contextlib.suppress(FileNotFoundError):
                ready.unlink()
            args += [str(node.config_path), str(ready)]
        proc = self._spawn(args, env or dict(os.environ), f"ps{group[0].node_id}")
        for node in group:
            node.proc = proc

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {"wan": self.run_dir / "wan.ready", **{f"ps{n.node_id}": self.run_dir / f"ps{n.node_id}.ready"
                                                          for n in self.nodes}}
        while pending:
            for name, path in list(pending.items()):
                if path.exists():
                    del pending[name]
            for proc, name in [(self.wan_proc, "wan"), *[(g[0].proc, f"ps{g[0].node_id}") for g in self.groups()]]:
                if proc is not None and proc.poll() is not None:
                    tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ready after {timeout:.0f}s: waiting for {sorted(pending)}")
            time.sleep(0.05)

    def _write_state(self) -> None:
        state = {"pids": {f"ps{n.node_id}": n.proc.pid for n in self.nodes if n.proc},
                 "wan_pid": self.wan_proc.pid if self.wan_proc else None, "control_port": self.control_port,
                 "auth": self.topo["auth"],
                 "nodes": [{"node_id": n.node_id, "dc": n.dc, "replica": n.replica, "address": n.address}
                           for n in self.nodes]}
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=1))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process, SIGKILL what is left after `grace` seconds."""
        procs = list({id(n.proc): n.proc for n in self.nodes if n.proc is not None}.values())
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
        """SIGKILL one PS (a crash); with `colocate` > 1, the servers sharing its process go down with it."""
        proc = self.nodes[node_id].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self, node_id: int, timeout: float = 30.0) -> None:
        """Start a killed PS (and the servers sharing its process) again with the same config: it reloads its
        snapshot/WAL and catches up from peers."""
        group = self._group_of(node_id)
        self._spawn_group(group)
        deadline = time.monotonic() + timeout
        for node in group:
            ready = self.run_dir / f"ps{node.node_id}.ready"
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
        return PSClient(self.nodes[node_id].address, timeout, self.auth)

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
    pids = sorted({p for p in [*state["pids"].values(), state.get("wan_pid")] if p})
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
