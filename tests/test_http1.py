"""The lean upstream client (gateway/proxy/http1.py) against real servers on 127.0.0.1.

A real aiohttp server for the ordinary cases; raw asyncio servers that write exact bytes for
the framing cases no well-behaved server produces (chunked, close-delimited, interim 1xx,
101, malformed or non-UTF-8 answers, a keep-alive connection closed under us); a TLS server
with a CA made here for ``https`` upstreams. Through the whole gateway: the retry of a request
on a connection the upstream closed, and that a slow client does not make us buffer a fast
upstream's whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import io
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import Reason
from gateway.proxy.http1_head import HeadLimits, UpstreamError, request_head
from gateway.proxy.pool import ConnectionPool
from tests.conftest import GatewayFactory

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request head plus its Content-Length body; b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def answering(*answers: bytes, close_after: bool = False) -> RawHandler:
    """A server that answers the n-th request on a connection with ``answers[n]``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            if not await read_request(reader):
                break
            writer.write(answer)
            await writer.drain()
        if close_after:
            writer.close()
            return
        await reader.read()  # wait for the client to hang up
        writer.close()

    return handler


async def exchange(pool: ConnectionPool, method: str = "GET", body: bytes = b"") -> tuple[int, list[Any], bytes]:
    conn = await pool.acquire()
    conn.send(method, request_head(method, "/x", "upstream", [], len(body)), body)
    head = await conn.read_head()
    data = await conn.read_all()
    pool.release(conn)
    return head.status, head.headers, data


async def make_pool(port: int, **kwargs: Any) -> ConnectionPool:
    kwargs.setdefault("connect_timeout", 2.0)
    kwargs.setdefault("read_timeout", 2.0)
    return ConnectionPool("127.0.0.1", port, **kwargs)


# -- an ordinary server -----------------------------------------------------------------------


@pytest.fixture
async def echo_server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=hashlib.sha256(body).hexdigest().encode(), headers={"X-Method": request.method})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return await aiohttp_server(app)


async def test_sequential_requests_reuse_one_connection(echo_server: TestServer) -> None:
    assert echo_server.port is not None
    pool = await make_pool(echo_server.port)
    for i in range(50):
        body = str(i).encode()
        status, headers, data = await exchange(pool, "POST", body)
        assert (status, data) == (200, hashlib.sha256(body).hexdigest().encode())
        assert ("X-Method", "POST") in headers
    assert pool.connections_made == 1
    await pool.close()


async def test_concurrent_requests_open_at_most_limit_connections(echo_server: TestServer) -> None:
    assert echo_server.port is not None
    pool = await make_pool(echo_server.port, limit=3)
    bodies = [bytes([i]) * (1000 + i) for i in range(40)]
    results = await asyncio.gather(*(exchange(pool, "PUT", b) for b in bodies))
    assert [r[2] for r in results] == [hashlib.sha256(b).hexdigest().encode() for b in bodies]
    assert pool.connections_made <= 3
    await pool.close()


async def test_large_request_body_is_sent_whole(echo_server: TestServer) -> None:
    assert echo_server.port is not None
    pool = await make_pool(echo_server.port)
    body = bytes(range(256)) * 8192  # 2 MiB: written head and body apart, not copied
    assert (await exchange(pool, "POST", body))[2] == hashlib.sha256(body).hexdigest().encode()
    await pool.close()


@pytest.mark.parametrize("size", [0, 1, 255 * 1024, 257 * 1024, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024])
async def test_known_length_answers_of_every_size_arrive_whole(
    make_gateway: GatewayFactory, raw_server: Any, size: int
) -> None:
    """Up to 1 MiB the answer is read whole and relayed in one piece, above it streamed; around the
    256 KiB read-ahead mark neither may stall."""
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: %d\r\n\r\n" % size + body)
            await writer.drain()
        writer.close()

    def tweak(raw: dict[str, Any]) -> None:
        _point_at(port)(raw)
        raw["routes"][0]["upstream_timeout_seconds"] = 2

    port = await raw_server(handler)
    gw = await make_gateway(tweak=tweak)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # and the connection is reused afterwards
            async with session.get(gw.url("sign", "/x")) as resp:
                assert resp.status == 200
                assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(body).digest()
    assert next(iter(gw.runtime.upstreams.values())).pool.connections_made == 1


async def test_refused_connection_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = await make_pool(port)
    with pytest.raises(UpstreamError) as info:
        await pool.acquire()
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE


# -- framing, byte for byte -------------------------------------------------------------------


async def test_chunked_answer_is_reassembled_and_the_connection_kept(raw_server: Any) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    port = await raw_server(answering(chunked, chunked))
    pool = await make_pool(port)
    assert (await exchange(pool))[2] == b"hello world"
    assert (await exchange(pool))[2] == b"hello world"
    assert pool.connections_made == 1
    await pool.close()


async def test_close_delimited_body_ends_at_eof_and_is_not_reused(raw_server: Any) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    port = await raw_server(answering(answer, close_after=True))
    pool = await make_pool(port)
    status, _, data = await exchange(pool)
    assert (status, data) == (200, b"until the end")
    await asyncio.sleep(0.01)
    assert pool.open_connections == 0
    await pool.close()


async def test_interim_100_continue_is_skipped(raw_server: Any) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    port = await raw_server(answering(interim + b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"))
    pool = await make_pool(port)
    assert await exchange(pool, "POST", b"x") == (201, [("Content-Length", "2")], b"ok")
    await pool.close()


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "101"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", "duplicate length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "both lengths"),
        (b"HTTP/1.1 200 OK\r\nX: a\nb\r\n\r\n", "bare LF"),
        (b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n", "not UTF-8"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "truncated"),
    ],
)
async def test_malformed_or_cut_answers_are_unavailable(raw_server: Any, answer: bytes, why: str) -> None:
    port = await raw_server(answering(answer, close_after=True))
    pool = await make_pool(port)
    with pytest.raises(UpstreamError) as info:
        await exchange(pool)
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE, why
    assert pool.connections_made == 1
    await asyncio.sleep(0.01)
    assert pool.open_connections == 0  # never reused
    await pool.close()


async def test_head_answer_has_no_body_and_is_not_reused(raw_server: Any) -> None:
    port = await raw_server(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"))
    pool = await make_pool(port)
    status, headers, data = await exchange(pool, "HEAD")
    assert (status, headers, data) == (200, [("Content-Length", "5")], b"")
    await asyncio.sleep(0.01)
    assert pool.open_connections == 0
    await pool.close()


async def test_connection_close_and_http10_answers_are_not_reused(raw_server: Any) -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"
    http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"
    port = await raw_server(answering(close))
    port10 = await raw_server(answering(http10))
    for p, body in ((port, b"a"), (port10, b"b")):
        pool = await make_pool(p)
        assert (await exchange(pool))[2] == body
        assert (await exchange(pool))[2] == body
        assert pool.connections_made == 2
        await pool.close()


async def test_unsolicited_bytes_on_an_idle_connection_close_it(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")  # as some servers do
        await writer.drain()
        await reader.read()

    pool = await make_pool(await raw_server(handler))
    assert (await exchange(pool))[2] == b"x"
    await asyncio.sleep(0.15)
    assert pool.open_connections == 0
    await pool.close()


async def test_silence_past_the_read_timeout_is_a_timeout(raw_server: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")  # and then nothing
        await writer.drain()
        await reader.read()

    pool = await make_pool(await raw_server(handler), read_timeout=0.2)
    conn = await pool.acquire()
    conn.send("GET", request_head("GET", "/", "u", [], 0), b"")
    assert (await conn.read_head()).status == 200
    with pytest.raises(UpstreamError) as info:
        await conn.read_all()
    assert info.value.reason is Reason.UPSTREAM_TIMEOUT
    conn.close()
    await pool.close()


async def test_waiting_for_a_free_connection_is_bounded(raw_server: Any) -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await gate.wait()
        writer.close()

    pool = await make_pool(await raw_server(handler), limit=1, connect_timeout=0.2)
    held = await pool.acquire()
    with pytest.raises(UpstreamError) as info:
        await pool.acquire()
    assert info.value.reason is Reason.UPSTREAM_TIMEOUT
    held.close()
    gate.set()
    await asyncio.sleep(0.01)
    assert pool.open_connections == 0
    await pool.close()


async def test_a_cancelled_waiter_passes_its_wake_up_on(echo_server: TestServer) -> None:
    assert echo_server.port is not None
    pool = await make_pool(echo_server.port, limit=1)
    assert (await exchange(pool))[0] == 200
    held = await pool.acquire()
    b = asyncio.ensure_future(pool.acquire())
    c = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.02)  # both wait for room
    pool.release(held)  # wakes b ...
    b.cancel()  # ... whose client went away before it ran
    conn = await asyncio.wait_for(c, 0.5)  # c must not sleep until connect_timeout
    assert conn is held
    conn.close()
    await pool.close()


async def test_waiting_at_the_limit_is_bounded_in_all_even_under_contention(echo_server: TestServer) -> None:
    """Newcomers keep taking the connection a waiter was woken for: the waiter still gets an
    answer (here 504) within connect_timeout, not a fresh timeout after every wake-up."""
    assert echo_server.port is not None
    pool = await make_pool(echo_server.port, limit=1, connect_timeout=0.3)
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.ensure_future(pool.acquire())
    deadline = started + 2
    while not waiter.done() and loop.time() < deadline:
        held.send("GET", request_head("GET", "/", "u", [], 0), b"")
        await held.read_head()
        await held.read_all()
        pool.release(held)  # wakes the waiter, but a newcomer grabs the connection first
        held = await pool.acquire()
    assert waiter.done(), "the waiter waited past connect_timeout"
    assert loop.time() - started < 0.6
    with pytest.raises(UpstreamError) as info:
        waiter.result()
    assert info.value.reason is Reason.UPSTREAM_TIMEOUT
    held.close()
    await pool.close()


async def test_chunked_only_when_it_is_the_last_coding(raw_server: Any) -> None:
    """RFC 9112 §6.3: "chunked, identity" is not chunked framing; the body runs to the close."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\nhello world"
    port = await raw_server(answering(answer, close_after=True))
    pool = await make_pool(port)
    assert (await exchange(pool))[2] == b"hello world"
    await pool.close()


def test_request_head_is_byte_exact_and_refuses_line_breaks() -> None:
    weird = b"caf\xc3\xa9 \xff".decode("utf-8", "surrogateescape")  # as aiohttp's parser hands it over
    head = request_head("POST", "/a%20b?q=1", "up:8080", [("X-Weird", weird)], 3)
    assert head == (
        b"POST /a%20b?q=1 HTTP/1.1\r\nHost: up:8080\r\nX-Weird: caf\xc3\xa9 \xff\r\nContent-Length: 3\r\n\r\n"
    )
    assert b"Content-Length" not in request_head("GET", "/", "up", [], 0)
    assert b"Content-Length: 0" in request_head("POST", "/", "up", [], 0)
    for bad in ("a\r\nInjected: 1", "a\nb", "a\rb", "a\0b"):
        with pytest.raises(ValueError):
            request_head("GET", "/", "up", [("X", bad)], 0)
        with pytest.raises(ValueError):
            request_head("GET", "/", "up", [(bad, "v")], 0)
    with pytest.raises(ValueError):
        request_head("GET", "/ HTTP/1.1\r\nX: y", "up", [], 0)


# -- TLS upstreams ----------------------------------------------------------------------------


def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def test_https_upstream_is_verified(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls"
    server = await asyncio.start_server(answering(ok, ok), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = await make_pool(port, ssl_context=client_ctx)
        assert (await exchange(pool))[2] == b"tls"
        assert (await exchange(pool))[2] == b"tls"
        assert pool.connections_made == 1
        await pool.close()
        untrusting = await make_pool(port, ssl_context=ssl.create_default_context())
        with pytest.raises(UpstreamError) as info:
            await untrusting.acquire()  # a certificate we do not trust is no upstream
        assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE
    finally:
        server.close()
        await server.wait_closed()


# -- through the gateway ----------------------------------------------------------------------


def _point_at(port: int) -> Callable[[dict[str, Any]], None]:
    def tweak(raw: dict[str, Any]) -> None:
        for route in raw["routes"]:
            route["upstream"] = f"http://127.0.0.1:{port}"

    return tweak


async def test_a_kept_alive_connection_closed_under_us_is_retried_only_when_idempotent(
    make_gateway: GatewayFactory, raw_server: Any
) -> None:
    """The upstream answers the first request on each connection, then drops the connection on
    the second without answering (a keep-alive timeout racing our request)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        seen.append(await read_request(reader))
        writer.transport.abort()

    gw = await make_gateway(tweak=_point_at(await raw_server(handler)))
    async with aiohttp.ClientSession() as session:
        for method in ("GET", "GET", "DELETE"):
            async with session.request(method, gw.url("sign", "/x")) as resp:
                assert (resp.status, await resp.read()) == (200, b"ok")
        async with session.post(gw.url("sign", "/x"), data=b"once") as resp:
            doc = await resp.json(content_type=None)
    # A POST is not sent twice on our own: the client sees 502 and decides.
    assert (resp.status, doc["reason"]) == (502, "upstream_unavailable")
    assert sum(1 for r in seen if r.startswith(b"POST")) == 1


async def test_a_slow_client_does_not_make_us_buffer_a_fast_upstream(
    make_gateway: GatewayFactory, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    total = 32 * 1024 * 1024
    sent = 0

    async def fast(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        while sent < total:
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", fast)
    up = await aiohttp_server(app)
    assert up.port is not None
    gw = await make_gateway(tweak=_point_at(up.port))
    digest = hashlib.sha256()
    received = 0
    async with aiohttp.ClientSession() as session, session.get(gw.url("sign", "/big")) as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(65536)
        digest.update(first)
        received += len(first)
        await asyncio.sleep(0.3)  # a slow reader: the upstream must be held back meanwhile
        assert sent - received < 12 * 1024 * 1024, "the gateway read far ahead of its client"
        async for piece in resp.content.iter_chunked(1 << 20):
            digest.update(piece)
            received += len(piece)
    assert received == total
    assert digest.hexdigest() == hashlib.sha256(chunk * (total // len(chunk))).hexdigest()


async def test_connections_are_pooled_through_the_gateway(
    make_gateway: GatewayFactory, echo_server: TestServer
) -> None:
    assert echo_server.port is not None
    gw = await make_gateway(tweak=_point_at(echo_server.port))
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(gw.url("sign", "/x")) as resp:
                assert resp.status == 200
    pool = next(iter(gw.runtime.upstreams.values())).pool
    assert pool.connections_made == 1


# -- bounded answers (issue 9: an upstream flooding headers) ----------------------------------

NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED_OK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"  # trailers to follow


def first_then_clean(first: bytes) -> RawHandler:
    """Answers the first request the server ever sees with ``first`` (in one write), every later
    one, on any connection, with ``NEXT``: a reused connection shows as leftovers of ``first``."""
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await read_request(reader):
            answered += 1
            writer.write(first if answered == 1 else NEXT)
            await writer.drain()
        writer.close()

    return handler


def _headers(count: int, value: bytes = b"v") -> bytes:
    return b"".join(b"X-H%d: %s\r\n" % (i, value) for i in range(count))


@pytest.mark.parametrize(
    ("answer", "accepted"),
    [
        (b"HTTP/1.1 200 OK\r\n" + _headers(99) + b"Content-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\n" + _headers(100) + b"Content-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * (64 * 1024 - 60) + b"\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * (64 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 " + b"O" * 512 + b"\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 " + b"O" * 513 + b"\r\nContent-Length: 2\r\n\r\nok", False),
        # interim heads count towards the same byte budget
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 2000 + OK, False),
        # trailers are buffered whole by httptools: bounded like a head (give or take one read)
        (CHUNKED_OK + b"X: " + b"v" * 1_000_000 + b"\r\n\r\n", False),
        (CHUNKED_OK + b"X: " + b"v" * 1000 + b"\r\n\r\n", True),
    ],
    ids=["99+1 headers", "100+1 headers", "head under 64K", "head over 64K", "reason 512", "reason 513",
         "2000 interims", "huge trailer", "small trailer"],
)  # fmt: skip
async def test_response_heads_are_bounded(raw_server: Any, answer: bytes, accepted: bool) -> None:
    """Defaults: 100 header fields, 64 KiB of head, 512 bytes of reason; past them 502 and the
    connection is never reused (the next request gets its own answer)."""
    pool = await make_pool(await raw_server(first_then_clean(answer)), read_timeout=1.0)
    if accepted:
        assert (await exchange(pool))[2] == b"ok"
    else:
        with pytest.raises(UpstreamError) as info:
            await exchange(pool)
        assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE
    assert (await exchange(pool))[2] == b"next"
    assert pool.connections_made == (1 if accepted else 2)
    await pool.close()


async def test_the_limits_are_configurable(raw_server: Any) -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + _headers(5) + b"Content-Length: 2\r\n\r\nok"
    strict = await make_pool(await raw_server(answering(answer)), head_limits=HeadLimits(max_headers=5))
    with pytest.raises(UpstreamError):
        await exchange(strict)
    small = await make_pool(await raw_server(answering(answer)), head_limits=HeadLimits(max_head_bytes=60))
    with pytest.raises(UpstreamError):
        await exchange(small)
    short = await make_pool(await raw_server(answering(answer)), head_limits=HeadLimits(max_reason_bytes=1))
    with pytest.raises(UpstreamError):
        await exchange(short)
    for pool in (strict, small, short):
        await pool.close()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_header_flood_is_cut_off_early_and_answered_502(make_gateway: GatewayFactory, raw_server: Any) -> None:
    """The attack from issue 9: an upstream sends header lines without end. The gateway stops
    reading at the limit (the upstream cannot push much past it), answers 502 problem+json
    right away, and its memory stays flat."""
    sent = 0
    cut = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        piece = b"HTTP/1.1 200 OK\r\n" + _headers(5000)  # ~60 KiB a write, 2,000,000 lines at most
        try:
            for _ in range(400):
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
                piece = _headers(5000)
        except ConnectionError:
            pass
        cut.set()
        writer.close()

    def tweak(raw: dict[str, Any]) -> None:
        _point_at(port)(raw)
        raw["routes"][0]["upstream_timeout_seconds"] = 5

    port = await raw_server(flood)
    gw = await make_gateway(tweak=tweak)
    before = _rss_kib()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session, session.get(gw.url("sign", "/x")) as resp:
        doc = await resp.json(content_type=None)
    assert (resp.status, doc["reason"]) == (502, "upstream_unavailable")
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert loop.time() - started < 1.0
    await asyncio.wait_for(cut.wait(), 1.0)
    assert sent < 16 * 1024 * 1024, "the gateway kept reading past the limit"
    assert _rss_kib() - before < 16 * 1024


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "obs-fold"),
        (b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nok", "control character in a value"),
        (b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok", "control character in the reason"),
        (b"HTTP/1.1 200 O\x1bK\r\nContent-Length: 2\r\n\r\nok", "escape in the reason"),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "not HTTP/1.x"),
        (b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nok", "HTTP/0.9"),
        (b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n" + NEXT, "status under 100"),
        (b"HTTP/1.1 600 High\r\nContent-Length: 2\r\n\r\nok", "status over 599"),
        (b"HTTP/1.1 199 Odd\r\nContent-Length: 1\r\n\r\nX" + NEXT, "a 1xx with a body (found by the fuzzer)"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nnext", "204 announcing a body"),
        (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnext\r\n0\r\n\r\n", "204 chunked"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "CL and TE"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nnext", "same CL twice"),
    ],
)
async def test_bad_answers_are_502_and_never_poison_the_next_request(raw_server: Any, answer: bytes, why: str) -> None:
    pool = await make_pool(await raw_server(first_then_clean(answer)))
    with pytest.raises(UpstreamError) as info:
        await exchange(pool)
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE, why
    assert (await exchange(pool))[2] == b"next", why
    assert pool.connections_made == 2, why
    await pool.close()


@pytest.mark.parametrize(
    ("method", "answer", "relayed"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + NEXT, b"ok"),  # stray answer, same write
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE", b"ok"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nnext", b""),  # 304 keeps its CL
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\nnext", b""),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext", b""),  # HEAD answered with a body
    ],
)
async def test_bytes_after_an_answer_never_reach_the_next_request(
    raw_server: Any, method: str, answer: bytes, relayed: bytes
) -> None:
    pool = await make_pool(await raw_server(first_then_clean(answer)))
    assert (await exchange(pool, method))[2] == relayed
    assert (await exchange(pool))[2] == b"next"
    assert pool.connections_made == 2
    await pool.close()


# -- clients that never read (issue 9: slow readers pinning the pool) -------------------------


async def _non_reading_client(port: int, path: str) -> asyncio.StreamWriter:
    """A client that asks for ``path`` and never reads: a tiny receive buffer, so the gateway's
    writes towards it block after a few hundred KiB at most."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await writer.drain()
    return writer


@pytest.fixture
async def endless(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    """``/big`` streams up to 256 MiB (bounded, never reached here); anything else is small."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not request.path.endswith("/big"):
            return web.Response(text="small")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(4096):
                await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return await aiohttp_server(app)


async def _wait_until(condition: Callable[[], bool], within: float = 1.5) -> bool:
    for _ in range(int(within / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def _stalled(pool: ConnectionPool) -> int:
    return sum(1 for c in list(pool._open) if getattr(c, "client_wait", None) is not None)


async def test_a_client_that_never_reads_is_dropped_and_its_upstream_connection_closed(
    make_gateway: GatewayFactory, endless: TestServer
) -> None:
    assert endless.port is not None
    gw = await make_gateway(tweak=_point_at(endless.port))
    pool = next(iter(gw.runtime.upstreams.values())).pool
    pool.write_timeout = 0.3  # the default is 30 s; what matters is that it ends at all
    sink = io.StringIO()
    gw.runtime.access_log.sink, gw.runtime.access_log.enabled = sink, True
    client = await _non_reading_client(gw.port("sign"), "/big")
    try:
        assert await _wait_until(lambda: pool.connections_made == 1)
        # the upstream connection is closed (never pooled half-read), the client dropped
        assert await _wait_until(lambda: pool.open_connections == 0), "a non-reading client pins the pool"
        assert not pool._idle

        def logged() -> bool:
            gw.runtime.access_log.flush()
            return '"reason":"client_stalled"' in sink.getvalue()

        assert await _wait_until(logged)
        line = json.loads(sink.getvalue().splitlines()[-1])
        assert (line["outcome"], line["reason"]) == ("upstream_aborted", "client_stalled")
    finally:
        client.close()


async def test_non_reading_clients_do_not_starve_other_requests(
    make_gateway: GatewayFactory, endless: TestServer
) -> None:
    """Two clients hold the whole pool (limit 2) and stop reading; a third request on the same
    route still gets its answer quickly: the relay stalled longest is dropped for it."""
    assert endless.port is not None

    def tweak(raw: dict[str, Any]) -> None:
        _point_at(endless.port or 0)(raw)
        raw["routes"][0]["connect_timeout_seconds"] = 1.5

    gw = await make_gateway(tweak=tweak)
    pool = next(iter(gw.runtime.upstreams.values())).pool
    pool.limit = 2
    pool.busy_write_timeout = 0.1  # write_timeout stays 30 s: only the pressure may free them
    slow = [await _non_reading_client(gw.port("sign"), "/big") for _ in range(2)]
    try:
        assert await _wait_until(lambda: pool.open_connections == 2)
        await _wait_until(lambda: _stalled(pool) == 2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with aiohttp.ClientSession() as session, session.get(gw.url("sign", "/small")) as resp:
            assert (resp.status, await resp.text()) == (200, "small")
        assert loop.time() - started < 1.0
        assert pool.open_connections <= 2
    finally:
        for writer in slow:
            writer.close()


async def test_a_reading_client_is_not_dropped_while_nobody_waits(
    make_gateway: GatewayFactory, endless: TestServer
) -> None:
    """The busy deadline applies only under pressure: a client that reads slowly, in pauses
    longer than ``busy_write_timeout``, gets its whole answer while the pool has room."""
    assert endless.port is not None
    gw = await make_gateway(tweak=_point_at(endless.port))
    pool = next(iter(gw.runtime.upstreams.values())).pool
    pool.busy_write_timeout = 0.05
    pool.write_timeout = 1.0
    async with aiohttp.ClientSession() as session, session.get(gw.url("sign", "/big")) as resp:
        await resp.content.readexactly(1 << 20)
        await asyncio.sleep(0.2)  # stalls past busy_write_timeout, within write_timeout
        await resp.content.readexactly(1 << 20)
    assert pool.connections_made == 1
