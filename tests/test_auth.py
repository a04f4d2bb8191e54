"""The shared credentials plumbing (recmine.auth) on its own: what it accepts, what it refuses, and a token check
that runs before any method, for plain grpc and for grpc.aio servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from recmine.auth import Auth, is_loopback, read_token, split_address


def test_loopback_and_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    assert not is_loopback("ps7.dc2.example")
    assert split_address("[::1]:50051") == ("::1", 50051)
    with pytest.raises(ValueError, match="host:port"):
        split_address("no-port")


def test_incomplete_or_missing_credentials_are_refused(pki, tmp_path):
    with pytest.raises(ValueError, match=r"missing \['key'\]"):
        Auth(ca=str(pki["ca"]), cert=str(pki["server"]))
    with pytest.raises(FileNotFoundError, match="TLS cert file not found"):
        Auth(ca=str(pki["ca"]), cert=str(tmp_path / "nope.pem"), key=str(pki["server-key"]))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown auth field"):
        Auth.from_mapping({"cafile": "x"})
    assert read_token(pki["token"]) == "s3cret-token"


def test_plaintext_beyond_loopback_needs_insecure(pki):
    with pytest.raises(ValueError, match="refusing to listen on '0.0.0.0' without TLS"):
        Auth().check_listen("0.0.0.0")
    Auth(insecure=True).check_listen("0.0.0.0")
    Auth(str(pki["ca"]), str(pki["server"]), str(pki["server-key"])).check_listen("0.0.0.0")
    Auth().check_listen("127.0.0.1")


@pytest.mark.parametrize("tls", [False, True])
def test_a_wrong_or_missing_token_is_refused_before_the_method_runs(pki, tls):
    from concurrent.futures import ThreadPoolExecutor

    ran = []
    handler = grpc.method_handlers_generic_handler("t.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: ran.append(req) or req)})
    tls_files = (str(pki["ca"]), str(pki["server"]), str(pki["server-key"])) if tls else (None, None, None)
    server_auth = Auth(*tls_files, token="s3cret-token")
    server = grpc.server(ThreadPoolExecutor(2), interceptors=server_auth.server_interceptors())
    server.add_generic_rpc_handlers((handler,))
    port = server_auth.add_port(server, "127.0.0.1:0")
    server.start()
    try:
        client_tls = (str(pki["ca"]), str(pki["client"]), str(pki["client-key"])) if tls else (None, None, None)
        for token, ok in (("s3cret-token", True), ("not-the-token", False), (None, False)):
            with Auth(*client_tls, token=token).channel(f"127.0.0.1:{port}") as ch:
                say = ch.unary_unary("/t.Echo/Say")
                if ok:
                    assert say(b"hi", timeout=5) == b"hi"
                else:
                    with pytest.raises(grpc.RpcError) as ei:
                        say(b"bad", timeout=5)
                    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ran == [b"hi"]  # the refused calls never reached the method
    finally:
        server.stop(0)


def test_aio_server_refuses_a_client_without_a_certificate(pki):
    async def main() -> None:
        ran = []

        async def say(req, ctx):
            ran.append(req)
            return req

        auth = Auth(str(pki["ca"]), str(pki["server"]), str(pki["server-key"]), token="s3cret-token")
        server = grpc.aio.server(interceptors=auth.aio_server_interceptors())
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),))
        port = auth.add_port(server, "127.0.0.1:0")
        await server.start()
        try:
            good = Auth(str(pki["ca"]), str(pki["client"]), str(pki["client-key"]), token="s3cret-token")
            rogue = Auth(str(pki["ca"]), str(pki["rogue-client"]), str(pki["rogue-client-key"]), token="s3cret-token")
            async with good.aio_channel(f"127.0.0.1:{port}") as ch:
                assert await ch.unary_unary("/t.Echo/Say")(b"hi", timeout=5) == b"hi"
            for bad in (rogue, Auth(token="s3cret-token")):  # a certificate from another CA; no TLS at all
                async with bad.aio_channel(f"127.0.0.1:{port}") as ch:
                    with pytest.raises(grpc.aio.AioRpcError) as ei:
                        await ch.unary_unary("/t.Echo/Say")(b"bad", timeout=5)
                    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ran == [b"hi"]
        finally:
            await server.stop(0)

    asyncio.run(main())
