"""WAN emulation on one machine: a TCP shaping proxy that every cross-DC PS-to-PS byte passes through.

Each PS has a NIC of fixed egress bandwidth shared by all its outgoing connections (a virtual-time token bucket:
a chunk leaves when the NIC has finished everything queued before it), each DC pair a one-way delay, and a
partition switch cuts a DC off (connections to or from it are dropped and refused until healed). Bytes are counted
per DC link. One proxy port per ordered (source PS, destination PS) pair; the bytes a destination sends back on
that connection are shaped by the destination's NIC. Run: python -m recmine.ekko.lab.wan SPEC.json"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Nic:
    """A PS's egress link: bytes leave one after another at `bits_per_s`."""

    bits_per_s: float
    next_free: float = 0.0
    busy: float = 0.0  # seconds spent sending so far

    def reserve(self, nbytes: int, now: float) -> float:
        """Queue nbytes; return the time its last byte has left the NIC."""
        start = max(now, self.next_free)
        took = nbytes * 8.0 / self.bits_per_s
        self.busy += took
        self.next_free = start + took
        return self.next_free


@dataclass
class Route:
    """A proxy port: traffic from PS `src` to PS `dst` (at dst_port)."""

    listen_port: int
    src: int
    src_dc: int
    dst: int
    dst_dc: int
    dst_port: int


@dataclass
class WanSpec:
    """The emulated network: routes, one-way delays (s) by DC pair, NIC bandwidth per PS (bits/s)."""

    routes: list[Route]
    delay_s: dict[str, float]  # "a,b" -> one-way seconds
    nic_bps: dict[int, float]  # node id -> egress bits/s
    control_port: int
    host: str = "127.0.0.1"
    bytes_by_link: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str) -> WanSpec:
        """Read a spec written by the cluster launcher."""
        d = json.loads(Path(path).read_text())
        return cls([Route(**r) for r in d["routes"]], d["delay_s"], {int(k): v for k, v in d["nic_bps"].items()},
                   d["control_port"], d.get("host", "127.0.0.1"))


class WanEmulator:
    """The proxy process's state: NICs, partitions, counters, open connections."""

    def __init__(self, spec: WanSpec) -> None:
        self.spec = spec
        self.nics = {node: Nic(bps) for node, bps in spec.nic_bps.items()}
        self.partitioned: set[int] = set()
        self.bytes: dict[tuple[int, int], int] = {}
        self.conns: dict[int, set[asyncio.StreamWriter]] = {}
        self.servers: list[asyncio.base_events.Server] = []

    def delay(self, a: int, b: int) -> float:
        return float(self.spec.delay_s.get(f"{a},{b}", self.spec.delay_s.get(f"{b},{a}", 0.0)))

    async def start(self) -> None:
        """Open every proxy port and the control port."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        for r in self.spec.routes:
            srv = await asyncio.start_server(lambda rd, wr, r=r: self._handle(r, rd, wr), self.spec.host,
                                             r.listen_port)
            self.servers.append(srv)
        self.servers.append(await asyncio.start_server(self._control, self.spec.host, self.spec.control_port))

    def _cut(self, r: Route) -> bool:
        return r.src_dc in self.partitioned or r.dst_dc in self.partitioned

    async def _handle(self, r: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut(r):
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.spec.host, r.dst_port)
        except OSError:
            writer.close()
            return
        conns = self.conns.setdefault(r.listen_port, set())
        conns.update((writer, up_writer))
        d = self.delay(r.src_dc, r.dst_dc)
        await asyncio.gather(
            self._pump(reader, up_writer, self.nics[r.src], d, (r.src_dc, r.dst_dc), r),
            self._pump(up_reader, writer, self.nics[r.dst], d, (r.dst_dc, r.src_dc), r),
            return_exceptions=True,
        )
        conns.discard(writer)
        conns.discard(up_writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nic: Nic, delay: float,
                    link: tuple[int, int], r: Route) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    break
                at, data = item
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._cut(r):
                    break
                writer.write(data)
                await writer.drain()

        task = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data or self._cut(r):
                    break
                now = time.monotonic()
                self.bytes[link] = self.bytes.get(link, 0) + len(data)
                queue.put_nowait((nic.reserve(len(data), now) + delay, data))
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await task
            with contextlib.suppress(Exception):
                writer.close()

    def partition(self, dc: int, on: bool) -> None:
        """Cut a DC off (on) or heal it; open connections through a cut DC are dropped."""
        if on:
            self.partitioned.add(dc)
            for r in self.spec.routes:
                if r.src_dc == dc or r.dst_dc == dc:
                    for w in list(self.conns.get(r.listen_port, ())):
                        w.close()
        else:
            self.partitioned.discard(dc)

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Line protocol: {"op": "partition", "dc": 1, "on": true} | {"op": "stats"} | {"op": "reset"}."""
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            req = json.loads(line or b"{}")
            op = req.get("op")
            if op == "partition":
                self.partition(int(req["dc"]), bool(req.get("on", True)))
                resp = {"ok": True, "partitioned": sorted(self.partitioned)}
            elif op == "stats":
                resp = {"ok": True, "bytes": {f"{a},{b}": n for (a, b), n in self.bytes.items()},
                        "partitioned": sorted(self.partitioned)}
            elif op == "reset":
                self.bytes.clear()
                resp = {"ok": True}
            else:
                resp = {"ok": False, "error": f"unknown op {op!r}"}
        except (TimeoutError, ValueError, KeyError) as exc:
            resp = {"ok": False, "error": str(exc)}
        writer.write((json.dumps(resp) + "\n").encode())
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()


def control(port: int, request: dict, host: str = "127.0.0.1", timeout: float = 5.0) -> dict:
    """Send one control request to a running WAN emulator and return its answer."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    resp = json.loads(buf or b"{}")
    if not resp.get("ok"):
        raise RuntimeError(f"WAN emulator refused {request}: {resp.get('error')}")
    return resp


async def _main(spec_path: str, ready_file: str | None) -> None:
    emu = WanEmulator(WanSpec.from_json(spec_path))
    await emu.start()
    if ready_file:
        Path(ready_file + ".tmp").write_text("ok")
        os.replace(ready_file + ".tmp", ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        if os.getppid() != parent and not os.environ.get("RECMINE_EKKO_DETACHED"):
            break
    for s in emu.servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: python -m recmine.ekko.lab.wan SPEC.json [READY_FILE]."""
    args = sys.argv[1:] if argv is None else argv
    asyncio.run(_main(args[0], args[1] if len(args) > 1 else None))


if __name__ == "__main__":
    main()
