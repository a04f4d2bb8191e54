"""Deployment configuration: the topology file (data centres, servers, tables, mode, protocol knobs, credentials)
and the configuration of one parameter-server process drawn from it: who it is, its peers and their addresses.

A topology either describes a local emulation (`dcs` x `replicas` servers that `recmine ekko cluster up` starts on
127.0.0.1 behind the WAN emulator) or names every server of a real deployment ("servers": id, dc, replica,
host:port), each started on its own host by `recmine ekko serve --topology F --node ID`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recmine.auth import Auth, split_address
from recmine.ekko.ps.compress import parse_scheduler

DEFAULTS: dict[str, Any] = {
    "dcs": 2, "replicas": 2, "shards": 2, "tables": {"emb": 64}, "rtt_ms": 50.0, "nic_mbps": 100.0,
    "mode": "ekko", "topology": "mesh", "pull_interval_ms": 0.0, "wait_ms": 1000, "checkpoint_s": 10.0,
    "origin_dc": 0, "delays_ms": {}, "wal": False, "snapshot_every_s": 0.0, "log_applies": False,
    "scheduler": "all", "scheduler_share": 0.9, "round_ms": 50.0, "traffic_half_life_s": 30.0,
    "servers": None, "auth": None, "colocate": 1,
}
SERVER_FIELDS = {"id", "dc", "replica", "address", "listen", "cert", "key"}


def load_topology(spec: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A validated topology: defaults filled in; ValueError naming a bad field (FileNotFoundError for a missing
    file, the topology's or a credential's). With "servers", `dcs` and `replicas` follow from them."""
    base = Path(".")
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
        base = p.parent
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown topology field(s): {sorted(unknown)}")
    topo = {**DEFAULTS, **data}
    if topo["servers"] is not None:
        _check_servers(topo)
    for key in ("dcs", "replicas", "shards", "colocate"):
        if not isinstance(topo[key], int) or isinstance(topo[key], bool) or topo[key] < 1:
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
    topo["auth"] = Auth.from_mapping(topo["auth"], base).to_mapping() if topo["auth"] else None
    for s in topo["servers"] or ():
        for k in ("cert", "key"):
            if s.get(k) and not os.path.isabs(s[k]):
                s[k] = str(base / s[k])
    return topo


def _check_servers(topo: dict[str, Any]) -> None:
    """Validate a deployment's server list and set dcs / replicas from it."""
    servers = topo["servers"]
    if not isinstance(servers, list) or not servers:
        raise ValueError("topology field 'servers' must be a non-empty list")
    ids, slots = set(), set()
    for i, s in enumerate(servers):
        if not isinstance(s, dict) or not {"id", "dc", "replica", "address"} <= set(s):
            raise ValueError(f"servers[{i}] needs id, dc, replica and address (host:port)")
        if set(s) - SERVER_FIELDS:
            raise ValueError(f"servers[{i}]: unknown field(s) {sorted(set(s) - SERVER_FIELDS)}")
        for k in ("id", "dc", "replica"):
            if not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < 0:
                raise ValueError(f"servers[{i}].{k} must be an integer >= 0, got {s[k]!r}")
        split_address(s["address"])
        if "listen" in s:
            split_address(s["listen"])
        if s["id"] in ids:
            raise ValueError(f"servers[{i}]: id {s['id']} appears twice")
        if (s["dc"], s["replica"]) in slots:
            raise ValueError(f"servers[{i}]: DC {s['dc']} has replica {s['replica']} twice")
        ids.add(s["id"])
        slots.add((s["dc"], s["replica"]))
    dcs = 1 + max(s["dc"] for s in servers)
    empty = sorted(set(range(dcs)) - {s["dc"] for s in servers})
    if empty:
        raise ValueError(f"DC(s) {empty} have no server (DCs are numbered 0..{dcs - 1})")
    topo["dcs"] = dcs
    topo["replicas"] = max(sum(1 for s in servers if s["dc"] == d) for d in range(dcs))


@dataclass
class PeerInfo:
    """Another PS as this one sees it: ids and the address to dial (a WAN proxy port across DCs)."""

    node_id: int
    dc: int
    replica: int
    address: str


@dataclass
class PeerConfig:
    """Everything one PS process needs; written as JSON by the cluster launcher."""

    node_id: int
    dc: int
    replica: int
    port: int
    tables: dict[str, int]
    num_shards: int
    num_dcs: int
    replicas_per_dc: int
    peers: list[PeerInfo] = field(default_factory=list)
    host: str = "127.0.0.1"
    mode: str = "ekko"  # ekko | push | checkpoint
    topology: str = "mesh"  # mesh | tree
    pull_interval_ms: float = 0.0  # least time between two pulls of one loop
    wait_ms: int = 1000  # long-poll hold time
    stream_ms: int = 10000  # subscription length: changes stream as they happen for this long
    rpc_deadline_s: float = 5.0
    dead_backoff_s: float = 1.5
    origin_dc: int = 0  # where the trainer writes (push / checkpoint baselines send from there)
    checkpoint_s: float = 10.0
    snapshot_path: str | None = None
    snapshot_every_s: float = 0.0
    wal_path: str | None = None
    log_applies: bool = False
    max_message_bytes: int = 4 * 1024 * 1024
    go_file: str | None = None  # start disseminating once this file exists (the launcher's "all peers are up")
    scheduler: str = "all"  # outgoing WAN sync: all (send every change at once) | slo | fifo, +int8 / +fp16 (scheduler.py)
    link_bytes_per_s: float = 0.0  # the scheduler's WAN byte budget (slo / fifo)
    round_ms: float = 50.0  # the scheduler's round length
    traffic_half_life_s: float = 30.0  # how fast the scheduler forgets which keys inference reads
    auth: dict = field(default_factory=dict)  # recmine.auth.Auth fields: mutual TLS files, bearer token, insecure

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> PeerConfig:
        """Read a config file written by to_json()."""
        data = json.loads(Path(path).read_text())
        data["peers"] = [PeerInfo(**p) for p in data.get("peers", [])]
        return cls(**data)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=1))


def common_fields(topo: dict[str, Any]) -> dict[str, Any]:
    """The PeerConfig fields every server of a topology shares."""
    return dict(tables=dict(topo["tables"]), num_shards=topo["shards"], num_dcs=topo["dcs"],
                replicas_per_dc=topo["replicas"], mode=topo["mode"], topology=topo["topology"],
                wait_ms=int(topo["wait_ms"]), origin_dc=topo["origin_dc"], checkpoint_s=float(topo["checkpoint_s"]),
                snapshot_every_s=float(topo["snapshot_every_s"]), log_applies=bool(topo["log_applies"]),
                scheduler=topo["scheduler"], round_ms=float(topo["round_ms"]),
                traffic_half_life_s=float(topo["traffic_half_life_s"]),
                link_bytes_per_s=topo["nic_mbps"] * 1e6 / 8 * topo["scheduler_share"], auth=dict(topo["auth"] or {}))


def deployment_config(topo: dict[str, Any], node_id: int, data_dir: str | os.PathLike[str] | None = None,
                      auth: Auth | None = None) -> PeerConfig:
    """The config of server `node_id` of a deployment topology (one with "servers"): it listens on its address
    (or "listen"), dials every peer at its address; `auth` (default: the topology's, with the server's own
    certificate when it names one); `data_dir` holds its snapshot and write-ahead log (wal on)."""
    if not topo.get("servers"):
        raise ValueError("this topology names no servers: use `recmine ekko cluster up` for a local emulation, or "
                         "list every server (id, dc, replica, address host:port) under \"servers\"")
    by_id = {s["id"]: s for s in topo["servers"]}
    if node_id not in by_id:
        raise ValueError(f"node {node_id} is not in the topology (servers: {sorted(by_id)})")
    me = by_id[node_id]
    host, port = split_address(me.get("listen", me["address"]))
    if auth is None:
        auth = Auth.from_mapping(topo["auth"]).with_identity(me.get("cert"), me.get("key"))
    auth.check_listen(host)
    pim = topo["pull_interval_ms"]
    peers = [PeerInfo(s["id"], s["dc"], s["replica"], s["address"]) for s in topo["servers"] if s["id"] != node_id]
    fields = common_fields(topo) | {"auth": auth.to_mapping()}
    cfg = PeerConfig(node_id=node_id, dc=me["dc"], replica=me["replica"], port=port, host=host, peers=peers,
                     pull_interval_ms=float(pim.get(str(me["dc"]), 0.0)) if isinstance(pim, dict) else float(pim),
                     **fields)
    if data_dir is not None:
        d = Path(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        cfg.snapshot_path = str(d / f"ps{node_id}.snap.npz")
        cfg.wal_path = str(d / f"ps{node_id}.wal") if topo["wal"] else None
    return cfg
