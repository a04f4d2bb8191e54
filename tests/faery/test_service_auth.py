"""The retrieval service behind mutual TLS and a bearer token: only a client with a certificate from the service's
CA and the token is served; the others are refused (UNAVAILABLE at the handshake, UNAUTHENTICATED without the
token) and change nothing; `retrieve serve` refuses plaintext beyond loopback unless --insecure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")

from recmine.auth import Auth  # noqa: E402
from recmine.faery.client import Client, connect  # noqa: E402
from recmine.faery.service import RetrievalServer  # noqa: E402


def test_only_a_client_with_the_cas_certificate_and_the_token_is_served(pki, tmp_path):
    server_auth = Auth(str(pki["ca"]), str(pki["server"]), str(pki["server-key"]), token="s3cret-token")
    srv = RetrievalServer(tmp_path / "idx", port=0, lifetime_s=30.0, auth=server_auth, dim=4, storage="fp32")
    srv.start()
    try:
        good = Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]), token="s3cret-token")
        with connect(srv.address, timeout=10.0, auth=good) as c:
            ids = c.add(np.eye(4, dtype=np.float32))
            assert c.search(np.array([[0, 0, 1, 0]], np.float32), 1)[1][0, 0] == ids[2]
        refused = [(Auth(token="s3cret-token"), grpc.StatusCode.UNAVAILABLE),
                   (Auth(str(pki["ca"]), str(pki["rogue-client"]), str(pki["rogue-client-key"]),
                         token="s3cret-token"), grpc.StatusCode.UNAVAILABLE),
                   (Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]), token="not-the-token"),
                    grpc.StatusCode.UNAUTHENTICATED),
                   (Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"])),
                    grpc.StatusCode.UNAUTHENTICATED)]
        for auth, code in refused:
            c = Client(srv.address, timeout=5.0, auth=auth)
            try:
                with pytest.raises(Exception) as ei:  # noqa: B017 - the client maps codes to its own errors
                    c.add(np.ones((1, 4), np.float32))
                assert ei.value.code == code
            finally:
                c.close()
        assert len(srv.core) == 4  # nothing the refused clients sent was applied
    finally:
        srv.stop(grace=0.2, checkpoint=False)


def test_cli_refuses_plaintext_beyond_loopback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "recmine.cli", "retrieve", "serve", "--index", str(tmp_path / "i"),
                          "--host", "0.0.0.0", "--port", "0", "--dim", "4", "--for-seconds", "1", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "without TLS" in res.stderr + res.stdout
    assert not (tmp_path / "i").exists() or not any((tmp_path / "i").iterdir())  # refused before opening anything
