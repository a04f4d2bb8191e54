"""The two ways of updating a geo-distributed model that ekko replaces, on the same store, processes and WAN.

- central push (mode "push"): the trainer's PS forwards every update to every other PS itself, so its NIC carries
  one copy per PS and saturates as data centres are added;
- checkpoint (mode "checkpoint"): every checkpoint_s the trainer's PS ships a full snapshot of every table to every
  other PS, so an update waits for the next checkpoint and then for a full-model transfer.
Select them with the topology's "mode"; peer.py runs these loops instead of P2P pulls."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import grpc
import numpy as np

from recmine.ekko.wire import rows_to_pb

if TYPE_CHECKING:
    from recmine.ekko.peer import PeerServer


async def push_loop(peer: PeerServer, node: int, q: asyncio.Queue) -> None:
    """Central push: forward queued updates to one destination PS, in batches, in order."""
    stub = None
    while True:
        first = await q.get()
        batch = [first]
        while not q.empty():
            batch.append(q.get_nowait())
        stub = stub or peer.pb2_grpc.ParameterServerStub(peer.channel(node))
        req = peer.pb2.ApplyRequest(rows=[rows_to_pb(peer.pb2, u) for u in batch])
        for _ in range(3):
            try:
                await stub.Apply(req, timeout=peer.cfg.rpc_deadline_s * 4)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)



async def checkpoint_loop(peer: PeerServer) -> None:
    """Checkpoint baseline: every checkpoint_s ship a full snapshot of every table to every other PS."""
    while True:
        await asyncio.sleep(peer.cfg.checkpoint_s)
        snap = [peer.store.dump(t) for t in peer.cfg.tables]
        msgs = []
        for up in snap:
            per = max(1, peer.cfg.max_message_bytes // max(1, up.values.shape[1] * 4 + 20))
            for lo in range(0, len(up), per):
                msgs.append(rows_to_pb(peer.pb2, up.take(np.arange(lo, min(lo + per, len(up))))))

        async def ship(node: int, msgs: list) -> None:
            stub = peer.pb2_grpc.ParameterServerStub(peer.channel(node))
            for m in msgs:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Apply(peer.pb2.ApplyRequest(rows=[m]), timeout=peer.cfg.checkpoint_s * 3)

        await asyncio.gather(*(ship(p.node_id, msgs) for p in peer.cfg.peers))
