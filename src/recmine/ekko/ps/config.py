"""The configuration of one parameter-server process: who it is, its peers and addresses, the mode and the
protocol's knobs. Written as JSON by the local launcher (lab/cluster.py) or a deployment."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
    scheduler: str = "all"  # outgoing WAN sync: all (send every change at once) | slo | fifo (see scheduler.py)
    link_bytes_per_s: float = 0.0  # the scheduler's WAN byte budget (slo / fifo)
    round_ms: float = 50.0  # the scheduler's round length
    traffic_half_life_s: float = 30.0  # how fast the scheduler forgets which keys inference reads

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> PeerConfig:
        """Read a config file written by to_json()."""
        data = json.loads(Path(path).read_text())
        data["peers"] = [PeerInfo(**p) for p in data.get("peers", [])]
        return cls(**data)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=1))
