"""The listener's edge (gateway/proxy/app.py) against raw sockets: what a client that breaks
the rules of HTTP gets — ``Expect`` (issue 9 item 9) and a client that leaves mid-body (item 10).
Each answer is a documented problem+json reason, a quiet warning line, never a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from tests.conftest import GatewayFactory, Recorder


async def _exchange(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    """Send ``request``, optionally half-close, and read until the server closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_expect_100_continue_is_answered_and_never_forwarded(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    gw = await make_gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port("sign"))
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # sent before the body: the client may go on
        writer.write(b"abc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert upstream.received[-1].body == b"abc"
    assert "Expect" not in upstream.received[-1].headers  # the gateway already read the whole body


async def test_http10_client_gets_no_interim_answer(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    reply = await _exchange(
        gw.port("sign"), b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert reply.startswith(b"HTTP/1.0 200") and b" 100 " not in reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("expect", [b"\xff", b"something-else", b"100-continue, other", b"100-continuex"])
async def test_any_other_expectation_is_417_problem_json(
    make_gateway: GatewayFactory, upstream: Recorder, caplog: pytest.LogCaptureFixture, expect: bytes
) -> None:
    gw = await make_gateway()
    with caplog.at_level(logging.WARNING):
        for listener in ("sign", "verify"):
            reply = await _exchange(
                gw.port(listener),
                b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: " + expect + b"\r\nContent-Length: 3\r\nConnection: close\r\n"
                b"\r\nabc",
            )
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 417"), head
            assert b"Content-Type: application/problem+json" in head
            assert json.loads(body)["reason"] == "expectation_failed"
    assert upstream.received == []
    assert _tracebacks(caplog) == []


async def test_expect_then_half_close_leaves_no_traceback(
    make_gateway: GatewayFactory, upstream: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway()
    with caplog.at_level(logging.WARNING):
        for _ in range(20):  # the race between writing 100 Continue and the FIN goes both ways
            await _exchange(
                gw.port("sign"),
                b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                half_close=True,
            )
    assert upstream.received == []
    assert _tracebacks(caplog) == []


async def test_client_closing_mid_body_is_one_warning_line_and_nothing_upstream(
    make_gateway: GatewayFactory, upstream: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway()
    sink = io.StringIO()
    gw.runtime.access_log.sink, gw.runtime.access_log.enabled = sink, True
    with caplog.at_level(logging.WARNING):
        for listener in ("sign", "verify"):
            reply = await _exchange(
                gw.port(listener),
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
                half_close=True,
            )
            assert reply == b""  # nobody left to answer
    gw.runtime.access_log.flush()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    aborted = [line for line in lines if line["reason"] == "client_aborted"]
    # the verify route refuses the unsigned request before reading its body: only sign reads it
    assert [(a["listener"], a["level"], a["status"]) for a in aborted] == [("sign", "warning", 499)]
    assert upstream.received == []
    assert _tracebacks(caplog) == []


@pytest.mark.parametrize(
    "request_line",
    [b"CONNECT /cb HTTP/1.1", b"CONNECT 127.0.0.1:22 HTTP/1.1", b"OPTIONS * HTTP/1.1", b"GET http://x/y HTTP/1.1"],
)
@pytest.mark.parametrize("expect", [b"100-continue", b"\xff"])
async def test_pathless_targets_with_expect_meet_the_edge_too(
    make_gateway: GatewayFactory,
    upstream: Recorder,
    caplog: pytest.LogCaptureFixture,
    request_line: bytes,
    expect: bytes,
) -> None:
    """aiohttp routes these to a system route whose Expect handling runs before any middleware."""
    gw = await make_gateway()
    with caplog.at_level(logging.WARNING):
        reply = await _exchange(
            gw.port("sign"),
            request_line + b"\r\nHost: a\r\nExpect: " + expect + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        for _ in range(10):  # and the client that leaves at once
            await _exchange(
                gw.port("sign"),
                request_line + b"\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                half_close=True,
            )
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 405, 417) and b"application/problem+json" in reply, reply[:300]
    assert upstream.received == []
    assert _tracebacks(caplog) == []
