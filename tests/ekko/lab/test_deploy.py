"""A deployment across hosts, played on 127.0.0.1: every server is its own `recmine ekko serve` process at the
address the topology names, with mutual TLS and a bearer token. Clients without a certificate from the deployment's
CA, or without the token, are refused and never served; plaintext beyond loopback is refused unless --insecure."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from recmine.auth import Auth
from recmine.ekko.lab.cluster import free_ports
from recmine.ekko.ps.client import PSClient
from recmine.ekko.ps.config import PeerConfig, deployment_config, load_topology

CMD = [sys.executable, "-m", "recmine.cli", "ekko", "serve"]


def _topology(tmp_path, pki, ports: list[int], host: str = "127.0.0.1") -> str:
    topo = {"tables": {"emb": 4}, "shards": 2, "wal": True,
            "servers": [{"id": 10 + i, "dc": i // 2, "replica": i % 2, "address": f"{host}:{p}"}
                        for i, p in enumerate(ports)],
            "auth": {"ca": "ca.pem", "cert": "server.pem", "key": "server.key", "token_file": "token"}}
    path = pki["ca"].parent / f"deploy-{ports[0]}.json"  # relative credential paths: from the topology's folder
    path.write_text(json.dumps(topo))
    return str(path)


def test_servers_at_their_own_addresses_with_mutual_tls_and_a_token(pki, tmp_path):
    ports = free_ports(4)
    topo = _topology(tmp_path, pki, ports)
    procs = [subprocess.Popen([*CMD, "-t", topo, "--node", str(10 + i), "--data-dir", str(tmp_path / "data"),
                               "--for-seconds", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    try:
        ready = [json.loads(p.stdout.readline()) for p in procs]
        assert [r["address"] for r in ready] == [f"127.0.0.1:{p}" for p in ports]
        assert all(r["tls"] and r["token"] and r["peers"] == 3 for r in ready)
        good = Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]), token="s3cret-token")
        keys, vals = np.arange(50), np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
        with PSClient(f"127.0.0.1:{ports[0]}", 10.0, good) as writer, \
                PSClient(f"127.0.0.1:{ports[3]}", 10.0, good) as far:  # DC 1's second server
            writer.put("emb", keys, vals)
            deadline = time.monotonic() + 30
            while not far.get("emb", keys)[1].all():
                assert time.monotonic() < deadline, "the rows never reached the other DC"
                time.sleep(0.05)
            assert np.array_equal(far.get("emb", keys)[0], vals)
            refused = {
                "no client certificate": (Auth(token="s3cret-token"), grpc.StatusCode.UNAVAILABLE),
                "a certificate from another CA": (Auth(str(pki["ca"]), str(pki["rogue-client"]),
                                                       str(pki["rogue-client-key"]), token="s3cret-token"),
                                                  grpc.StatusCode.UNAVAILABLE),
                "a wrong token": (Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]),
                                       token="not-the-token"), grpc.StatusCode.UNAUTHENTICATED),
                "no token": (Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"])),
                             grpc.StatusCode.UNAUTHENTICATED),
            }
            for what, (auth, code) in refused.items():
                with PSClient(f"127.0.0.1:{ports[0]}", 5.0, auth) as bad:
                    with pytest.raises(grpc.RpcError) as ei:
                        bad.put("emb", np.array([999]), np.ones((1, 4), np.float32))
                    assert ei.value.code() == code, what
                    with pytest.raises(grpc.RpcError):
                        bad.get("emb", keys)
            time.sleep(0.3)
            assert not writer.get("emb", np.array([999]))[1].any()  # none of those Puts was served
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
            p.stdout.close()
            p.stderr.close()
    assert all(p.returncode == 0 for p in procs)


def test_plaintext_beyond_loopback_is_refused_unless_insecure(pki, tmp_path):
    ports = free_ports(2)
    topo = load_topology({"tables": {"emb": 4}, "servers": [
        {"id": 0, "dc": 0, "replica": 0, "address": f"0.0.0.0:{ports[0]}"},
        {"id": 1, "dc": 1, "replica": 0, "address": f"10.9.9.9:{ports[1]}"}]})
    with pytest.raises(ValueError, match="refusing to listen on '0.0.0.0' without TLS"):
        deployment_config(topo, 0)
    cfg = deployment_config(topo, 0, auth=Auth(insecure=True))
    assert cfg.host == "0.0.0.0" and cfg.auth == {"insecure": True}
    cfg.auth = {}
    from recmine.ekko.ps.peer import PeerServer

    with pytest.raises(ValueError, match="without TLS"):
        PeerServer(cfg)  # a hand-written config is checked as well
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tables": {"emb": 4}, "servers": topo["servers"]}))
    res = subprocess.run([*CMD, "-t", str(path), "--node", "0", "--for-seconds", "1"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "without TLS" in res.stderr
    assert isinstance(cfg, PeerConfig)


def test_deployment_topology_validation():
    ok = {"id": 0, "dc": 0, "replica": 0, "address": "127.0.0.1:1"}
    cases = [([ok, dict(ok, replica=1)], "id 0 appears twice"),
             ([ok, dict(ok, id=1)], "replica 0 twice"),
             ([ok, dict(ok, id=1, dc=2)], r"DC\(s\) \[1\] have no server"),
             ([dict(ok, address="nohost")], "host:port"),
             ([dict(ok, port=3)], "unknown field"),
             ([{"id": 0, "dc": 0}], "needs id, dc, replica and address")]
    for servers, msg in cases:
        with pytest.raises(ValueError, match=msg):
            load_topology({"servers": servers})
    topo = load_topology({"servers": [ok, dict(ok, id=7, replica=1, address="127.0.0.1:2")]})
    assert (topo["dcs"], topo["replicas"]) == (1, 2)
    with pytest.raises(ValueError, match=r"node 3 is not in the topology \(servers: \[0, 7\]\)"):
        deployment_config(topo, 3)
    from recmine.ekko.lab.cluster import LocalCluster

    with pytest.raises(ValueError, match="ekko serve"):
        LocalCluster(topo)
