"""A lean HTTP/1.1 client for the upstream hop: keep-alive connections (pooled by
``gateway.proxy.pool``), one write per request, responses parsed by llhttp (``httptools``,
the parser uvicorn uses).

Why not aiohttp's client: on the hop it costs about as much CPU as the whole rest of a
proxied request (building a ``ClientRequest``, auto headers, a ``URL``, timers and a
``StreamReader`` per request). Here the request head is one string written with the body in
one ``transport.write``, and the answer is parsed straight into a list of chunks.

Invariants:
- one request at a time per connection (no pipelining); a connection is ``reusable`` only
  after a complete response that allows keep-alive (HTTP/1.1, no ``Connection: close``, no
  stray bytes after it, not an answer to HEAD), else the pool closes it;
- every read is bounded by ``read_timeout`` of silence;
- failures are ``UpstreamError`` with a reason code (502 ``upstream_unavailable`` or 504
  ``upstream_timeout``) and a detail that names no internal state;
- interim 1xx answers (``100 Continue``) are skipped, a 1xx that carries a body is refused;
  ``101`` is refused, since we never ask for an upgrade; malformed answers (bad framing,
  duplicate ``Content-Length``) are refused by llhttp, not guessed at;
- reading pauses when more than ``_HIGH_WATER`` bytes wait for the client, so a fast upstream
  streaming to a slow client costs bounded memory;
- a response head is bounded (``http1_head.HeadLimits``): bytes are counted *before* llhttp
  sees them, so the first byte past a limit stops parsing and the connection is closed;
  chunk framing and trailers between two pieces of body are bounded alike (give or take one
  read of 256 KiB), since httptools buffers a trailer field whole.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httptools

from gateway.errors import Reason
from gateway.proxy.http1_head import (
    HeadLimits,
    ResponseHead,
    UpstreamError,
    check_status_line,
    final_head,
    request_head,
    unavailable,
)

__all__ = [
    "IDEMPOTENT",
    "HeadLimits",
    "Http1Connection",
    "ResponseHead",
    "UpstreamError",
    "request_head",
]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# RFC 9110 §9.2.2: safe to send again when a reused connection turns out to be closed.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError(Reason.UPSTREAM_TIMEOUT, "the upstream did not answer in time"))


class PoolSide(Protocol):
    """What a connection needs of its pool (``gateway.proxy.pool.ConnectionPool``)."""

    loop: asyncio.AbstractEventLoop
    read_timeout: float
    head_limits: HeadLimits

    def forget(self, conn: Http1Connection) -> None: ...


class Http1Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` state is reset for every request."""

    def __init__(self, pool: PoolSide) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._limits = pool.head_limits
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        # Set while the relay waits for its client to take data; the pool may bring it forward.
        self.client_wait: asyncio.Timeout | None = None
        self.client_wait_since = 0.0
        self.pressed = False
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._head_only = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._status = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # of every head so far in this exchange, interim ones included
        self._framing = 0  # bytes since the last piece of body: chunk lines, extensions, trailers
        self._fed_body = 0
        self._head: ResponseHead | None = None
        self._interim = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._unbounded = False
        self._complete = False
        self._close_delimited = False
        self._keep_alive = False
        self._stray = False
        self.got_data = False

    # -- the pool's view ----------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    @property
    def reusable(self) -> bool:
        return self.usable and self._complete and self._keep_alive and not self._stray and not self._head_only

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.abort()  # nothing of ours is still buffered that the upstream needs

    # -- one exchange -------------------------------------------------------------------------

    def send(self, method: str, head: bytes, body: bytes) -> None:
        self._reset()
        self._active = True
        self._head_only = method == "HEAD"
        transport = self._transport
        if transport is None or not self.usable:
            self._error = unavailable("the upstream closed the connection")
            return  # read_head raises it; a reused connection is retried by the caller
        if len(body) <= 65536:
            transport.write(head + body if body else head)  # one segment for the usual request
        else:
            transport.write(head)
            transport.write(body)  # no copy of a large body

    async def read_head(self) -> ResponseHead:
        while self._head is None:
            await self._wait()
        return self._head

    async def read_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete."""
        while not self._chunks:
            if self._complete:
                return b""
            await self._wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def read_all(self) -> bytes:
        """The whole body; for answers whose declared length the caller has bounded."""
        self._unbounded = True  # nobody drains chunks meanwhile: pausing would stall until timeout
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        while not self._complete:
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(self._pool.read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._complete:
            self._stray = True  # the answer is whole; what broke came after it and is no answer
            return
        if self._error is None:
            self._error = error
        self._wake()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._active or self._complete:
            self._stray = True  # bytes nobody asked for: this connection is not reused
            self.close()
            return
        self.got_data = True
        try:
            if self._head is None:
                room = self._limits.max_head_bytes - self._head_bytes
                if len(data) > room:
                    # Feed only what may still be head: the rest is body if the head ends in it.
                    self._parser.feed_data(data[:room])
                    if self._head is None and self._error is None:
                        self._fail(unavailable("the upstream sent a response head over our size limit"))
                        self.close()
                        return
                    data = data[room:]
                else:
                    self._head_bytes += len(data)
                self._parser.feed_data(data)
                return
            self._fed_body = 0
            self._parser.feed_data(data)
            # httptools buffers a trailer field whole before handing it over: bound what arrives
            # between two pieces of body as we bound a head.
            self._framing = 0 if self._fed_body else self._framing + len(data)
            if self._framing > self._limits.max_head_bytes and not self._complete:
                self._fail(unavailable("the upstream sent chunk framing or trailers over our size limit"))
                self.close()
        except httptools.HttpParserCallbackError:
            self._fail(self._error or unavailable("the upstream sent an answer we do not accept"))
            self.close()
        except httptools.HttpParserError:
            self._fail(unavailable("the upstream sent a malformed response"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._active and not self._complete:
            if self._head is not None and self._close_delimited and exc is None:
                self._complete = True  # the body ran to the end of the connection
                self._wake()
            else:
                self._fail(unavailable("the upstream closed the connection"))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._stray = True
            raise RuntimeError  # a second answer nobody asked for: stop parsing, never reuse
        self._status = b""
        self._raw_headers = []

    def on_status(self, status: bytes) -> None:
        self._status += status
        if len(self._status) > self._limits.max_reason_bytes:
            self._error = unavailable("the upstream sent a status line over our size limit")
            raise RuntimeError

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._raw_headers) >= self._limits.max_headers:
            self._error = unavailable("the upstream sent more response headers than we accept")
            raise RuntimeError
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        parser = self._parser
        status = parser.get_status_code()
        try:
            check_status_line(status, parser.get_http_version(), self._status)
            if status < 200:
                self._interim = True  # 100 Continue, 102, 103: the real answer follows
                return
            version = parser.get_http_version()
            final = final_head(status, version, self._status, self._raw_headers, head_only=self._head_only)
        except UpstreamError as exc:
            self._error = exc
            raise RuntimeError from None  # stops llhttp; data_received turns it into the error above
        self._close_delimited = final.close_delimited
        self._keep_alive = final.keep_alive
        self._head = final.head
        if self._head_only:
            self._complete = True  # llhttp cannot know a HEAD answer has no body; we do
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        if self._complete:
            return
        if self._interim:
            # RFC 9112 §6.3: a 1xx answer ends with its head; llhttp reads a body for some (199
            # with a Content-Length). Whose framing is right is unknowable: refuse, never relay it.
            self._error = unavailable("the upstream sent a body with an interim (1xx) answer")
            raise RuntimeError
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= _HIGH_WATER and not self._paused and not self._unbounded and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        self._complete = True
        self._wake()
