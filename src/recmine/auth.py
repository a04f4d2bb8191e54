"""Authenticated gRPC services, shared by ekko's parameter servers and faery's retrieval service: mutual TLS (every
side shows a certificate signed by the deployment's CA) and a bearer token, through grpc's own credentials API.

A server built with an `Auth` that has TLS refuses a client without a valid certificate at the handshake (the client
sees UNAVAILABLE); one with a token answers UNAUTHENTICATED to a call that does not carry it, before any method
runs. A server refuses to listen on a non-loopback address without TLS unless `insecure` is set."""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

TOKEN_HEADER = "authorization"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address; "" and "0.0.0.0" / "::" mean every interface) is this machine only."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port); ValueError naming a malformed address."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Auth:
    """How a service and its clients authenticate: mutual TLS from PEM files (`ca` signs every certificate; `cert`
    and `key` are this side's) and/or a bearer `token`. `insecure` allows plaintext beyond loopback;
    `server_name` is the name the client checks in the server's certificate (default: the address's host)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = None
    insecure: bool = False
    server_name: str | None = None

    def __post_init__(self) -> None:
        given = {"ca": self.ca, "cert": self.cert, "key": self.key}
        if any(given.values()) and not all(given.values()):
            missing = sorted(k for k, v in given.items() if not v)
            raise ValueError(f"mutual TLS needs ca, cert and key; missing {missing}")
        for name, path in given.items():
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"TLS {name} file not found: {path}")
        if self.token is not None and not self.token.strip():
            raise ValueError("the bearer token is empty")

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any] | None, base: str | os.PathLike[str] = ".") -> Auth:
        """From a topology's "auth" object: {"ca", "cert", "key", "token" or "token_file", "insecure",
        "server_name"}; relative paths are taken from `base` (the topology file's folder)."""
        spec = dict(spec or {})
        unknown = set(spec) - {"ca", "cert", "key", "token", "token_file", "insecure", "server_name"}
        if unknown:
            raise ValueError(f"unknown auth field(s): {sorted(unknown)}")

        def path(p: str | None) -> str | None:
            return None if p is None else str(Path(base, p)) if not os.path.isabs(p) else p

        token = spec.get("token")
        if spec.get("token_file"):
            token = read_token(path(spec["token_file"]))
        return cls(path(spec.get("ca")), path(spec.get("cert")), path(spec.get("key")), token,
                   bool(spec.get("insecure", False)), spec.get("server_name"))

    def with_identity(self, cert: str | None, key: str | None) -> Auth:
        """The same CA and token with another certificate and key (one server of a deployment)."""
        return Auth(self.ca, cert or self.cert, key or self.key, self.token, self.insecure, self.server_name)

    def to_mapping(self) -> dict[str, Any]:
        """JSON-ready fields (from_mapping reads them back)."""
        return {k: v for k, v in {"ca": self.ca, "cert": self.cert, "key": self.key, "token": self.token,
                                  "insecure": self.insecure, "server_name": self.server_name}.items() if v}

    @property
    def tls(self) -> bool:
        """Whether mutual TLS is on."""
        return bool(self.ca)

    # ---- servers
    def check_listen(self, host: str) -> None:
        """ValueError when a server would listen beyond loopback in plaintext without `insecure`."""
        if not self.tls and not self.insecure and not is_loopback(host):
            raise ValueError(f"refusing to listen on {host!r} without TLS: give a CA, certificate and key "
                             "(mutual TLS) or say insecure (--insecure) to serve plaintext beyond this machine")

    def add_port(self, server: Any, address: str) -> int:
        """Bind `server` (grpc or grpc.aio) to `address` with these credentials; returns the port (0: failed)."""
        self.check_listen(split_address(address)[0])
        if not self.tls:
            return server.add_insecure_port(address)
        creds = grpc.ssl_server_credentials([(_read(self.key), _read(self.cert))], root_certificates=_read(self.ca),
                                            require_client_auth=True)
        return server.add_secure_port(address, creds)

    def server_interceptors(self) -> list:
        """Interceptors for grpc.server: the token check (none without a token)."""
        return [_TokenCheck(self.token)] if self.token else []

    def aio_server_interceptors(self) -> list:
        """Interceptors for grpc.aio.server: the token check (none without a token)."""
        return [_AioTokenCheck(self.token)] if self.token else []

    # ---- clients
    def _channel_args(self, address: str, options: list) -> tuple[grpc.ChannelCredentials | None, list]:
        opts = list(options)
        if not self.tls:
            return None, opts
        creds = grpc.ssl_channel_credentials(root_certificates=_read(self.ca), private_key=_read(self.key),
                                             certificate_chain=_read(self.cert))
        if self.token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(self.token))
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return creds, opts

    def channel(self, address: str, options: list | None = None) -> grpc.Channel:
        """A blocking channel to `address`: TLS with this side's certificate (and the token as call credentials),
        or plaintext carrying the token as metadata."""
        creds, opts = self._channel_args(address, options or [])
        if creds is not None:
            return grpc.secure_channel(address, creds, options=opts)
        ch = grpc.insecure_channel(address, options=opts)
        return grpc.intercept_channel(ch, _AddToken(self.token)) if self.token else ch

    def aio_channel(self, address: str, options: list | None = None) -> grpc.aio.Channel:
        """An asyncio channel to `address`, as `channel` does."""
        creds, opts = self._channel_args(address, options or [])
        if creds is not None:
            return grpc.aio.secure_channel(address, creds, options=opts)
        return grpc.aio.insecure_channel(address, options=opts,
                                         interceptors=_aio_token_adders(self.token) if self.token else None)


def read_token(path: str | os.PathLike[str]) -> str:
    """A bearer token from a file (surrounding whitespace dropped); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"token file not found: {p}")
    token = p.read_text().strip()
    if not token:
        raise ValueError(f"token file {p} is empty")
    return token


def _read(path: str | None) -> bytes:
    return Path(path).read_bytes() if path else b""


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _token_ok(metadata: Any, token: str) -> bool:
    want = _bearer(token).encode()
    for k, v in metadata or ():
        if k == TOKEN_HEADER:
            return hmac.compare_digest(v.encode() if isinstance(v, str) else v, want)
    return False


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without running the method."""
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class _TokenCheck(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_service(self, continuation, handler_call_details):  # noqa: D102 - grpc API
        handler = continuation(handler_call_details)
        if handler is None or _token_ok(handler_call_details.invocation_metadata, self.token):
            return handler
        return _deny(handler)


class _AioTokenCheck(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(self, continuation, handler_call_details):  # noqa: D102 - grpc API
        handler = await continuation(handler_call_details)
        if handler is None or _token_ok(handler_call_details.invocation_metadata, self.token):
            return handler
        return _aio_deny(handler)


def _aio_deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """As _deny, for an asyncio server (its handlers are coroutines / async generators)."""
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        yield  # pragma: no cover - never reached: abort raises

    fn = abort_stream if handler.response_streaming else abort
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return kinds[(handler.request_streaming, handler.response_streaming)](
        fn, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def _with_token(details: Any, token: str) -> Any:
    """The call's details with the bearer token added to its metadata."""
    pairs = [*(details.metadata or ()), (TOKEN_HEADER, _bearer(token))]
    meta = grpc.aio.Metadata(*pairs) if isinstance(details, grpc.aio.ClientCallDetails) else pairs
    return details._replace(metadata=meta)


class _AddToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Puts the bearer token in every call's metadata (plaintext channels; TLS ones use call credentials)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: D102
        return continuation(_with_token(client_call_details, self.token), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: D102
        return continuation(_with_token(client_call_details, self.token), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # noqa: D102
        return continuation(_with_token(client_call_details, self.token), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # noqa: D102
        return continuation(_with_token(client_call_details, self.token), request_iterator)


def _aio_token_adders(token: str) -> list:
    """asyncio client interceptors that put the bearer token in every call's metadata."""

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: D102
            return await continuation(_with_token(client_call_details, token), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: D102
            return await continuation(_with_token(client_call_details, token), request)

    return [UnaryUnary(), UnaryStream()]
