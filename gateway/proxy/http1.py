"""A lean HTTP/1.1 client for the upstream hop: pooled keep-alive connections, one write per
request, responses parsed by llhttp (``httptools``, the parser uvicorn uses).

Why not aiohttp's client: on the hop it costs about as much CPU as the whole rest of a
proxied request (building a ``ClientRequest``, auto headers, a ``URL``, timers and a
``StreamReader`` per request). Here the request head is one string written with the body in
one ``transport.write``, and the answer is parsed straight into a list of chunks.

Invariants:
- one request at a time per connection (no pipelining); a connection goes back to the pool
  only after a complete response that allows keep-alive (HTTP/1.1, no ``Connection: close``,
  no stray bytes after it, not an answer to HEAD), else it is closed;
- every wait is bounded: connecting by ``connect_timeout`` (also the longest wait for a free
  connection at the pool's limit), every read by ``read_timeout`` of silence;
- failures are ``UpstreamError`` with a reason code (502 ``upstream_unavailable`` or 504
  ``upstream_timeout``) and a detail that names no internal state;
- interim 1xx answers (``100 Continue``) are skipped; ``101`` is refused, since we never ask
  for an upgrade; malformed answers (bad framing, duplicate ``Content-Length``) are refused by
  llhttp, not guessed at;
- reading pauses when more than ``_HIGH_WATER`` bytes wait for the client, so a fast upstream
  streaming to a slow client costs bounded memory;
- a response head is bounded (``http1_head.HeadLimits``): bytes are counted *before* llhttp
  sees them, so the first byte past a limit stops parsing and the connection is closed;
- a connection never waits forever on our client either (``write_to_client``): each write
  towards the client ends within ``write_timeout``, and within ``busy_write_timeout`` of its
  start once another request waits for a connection at the pool's limit.

Why evict stalled relays instead of capping connections per client: behind a load balancer
every client shares one address, so a per-address cap would throttle everyone alike, while a
relay whose client has taken no data for ``busy_write_timeout`` is, by construction, a
connection held for nobody. Each request that has to wait for room brings forward the deadline
of the relay stalled longest (one per waiter), so a crowd of non-reading clients cannot hold
the pool against newcomers for longer than ``busy_write_timeout``; a slow but reading client
only loses its connection while others are actually waiting. Waiting for room stays bounded
by ``connect_timeout`` (504 ``upstream_timeout``, detail "no connection ... became free").
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable

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
    "ConnectionPool",
    "HeadLimits",
    "Http1Connection",
    "ResponseHead",
    "UpstreamError",
    "request_head",
]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_IDLE_TIMEOUT = 15.0  # seconds an idle keep-alive connection is kept (aiohttp's default too)
WRITE_TIMEOUT = 30.0  # seconds one write towards our client may take (the client took no data)
BUSY_WRITE_TIMEOUT = 1.0  # the same while another request waits for a connection at the limit
DEFAULT_HEAD_LIMITS = HeadLimits()
# RFC 9110 §9.2.2: safe to send again when a reused connection turns out to be closed.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError(Reason.UPSTREAM_TIMEOUT, "the upstream did not answer in time"))


def _expire_wait(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        detail = "no connection to the upstream became free in time"
        waiter.set_exception(UpstreamError(Reason.UPSTREAM_TIMEOUT, detail))


class Http1Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` state is reset for every request."""

    def __init__(self, pool: ConnectionPool) -> None:
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


class ConnectionPool:
    """Keep-alive connections to one upstream ``host:port``, at most ``limit`` open at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        limit: int = 256,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = _IDLE_TIMEOUT,
        head_limits: HeadLimits = DEFAULT_HEAD_LIMITS,
        write_timeout: float = WRITE_TIMEOUT,
        busy_write_timeout: float = BUSY_WRITE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # the longest silence while an answer is awaited
        self.limit = limit
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.head_limits = head_limits
        self.write_timeout = write_timeout
        self.busy_write_timeout = busy_write_timeout
        self.loop = asyncio.get_running_loop()
        self._idle: deque[Http1Connection] = deque()
        self._open: set[Http1Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.connections_made = 0  # for tests and operators: how often a new connection was needed

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def acquire(self, *, fresh: bool = False) -> Http1Connection:
        """An idle connection (the most recently used), else a new one once there is room; at
        the limit, waits at most ``connect_timeout`` in all (504 after that)."""
        deadline = self.loop.time() + self.connect_timeout
        while True:
            now = self.loop.time()
            while self._idle and not fresh:
                conn = self._idle.pop()  # the most recently used: the least likely to be closed
                if conn.usable and now - conn.idle_since < self.idle_timeout:
                    conn.reused = True
                    return conn
                conn.close()
            if len(self._open) + self._connecting < self.limit:
                return await self._connect()
            if self._idle:
                self._idle.popleft().close()  # fresh=True at the limit: make room (freed once it is lost)
            await self._wait_for_room(deadline)

    async def _wait_for_room(self, deadline: float) -> None:
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        self._press()
        timer = self.loop.call_at(deadline, _expire_wait, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._room()  # we were woken but will not use it: pass the wake-up on
            raise
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _connect(self) -> Http1Connection:
        self._connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Http1Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except BaseException as exc:
            self._connecting -= 1
            self._room()  # the slot this attempt held is free again
            if isinstance(exc, TimeoutError):
                detail = "the upstream did not accept a connection in time"
                raise UpstreamError(Reason.UPSTREAM_TIMEOUT, detail) from None
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise unavailable("the upstream could not be reached") from None
            raise
        self._connecting -= 1
        self.connections_made += 1
        if not conn.closed:
            self._open.add(conn)
        else:  # already gone (connection_lost ran first): its slot is free
            self._room()
        return conn

    async def write_to_client(self, conn: Http1Connection, write: Awaitable[object]) -> None:
        """Await ``write`` (towards the client ``conn``'s answer is relayed to) within
        ``write_timeout``, or ``busy_write_timeout`` while others wait for room; ``TimeoutError``
        after that, and the caller must then drop both the client and ``conn``."""
        limit = self.busy_write_timeout if self._waiters else self.write_timeout
        async with asyncio.timeout(limit) as deadline:
            conn.client_wait = deadline
            conn.client_wait_since = self.loop.time()
            conn.pressed = False
            try:
                await write
            finally:
                conn.client_wait = None

    def _press(self) -> None:
        """A request waits for room: the relay whose client has taken nothing for longest gets
        ``busy_write_timeout`` from the start of its write (one relay per waiter)."""
        victim: Http1Connection | None = None
        for conn in self._open:
            stalled = conn.client_wait is not None and not conn.pressed
            if stalled and (victim is None or conn.client_wait_since < victim.client_wait_since):
                victim = conn
        if victim is None or victim.client_wait is None:
            return
        victim.pressed = True
        when = max(self.loop.time(), victim.client_wait_since + self.busy_write_timeout)
        current = victim.client_wait.when()
        if current is None or when < current:
            victim.client_wait.reschedule(when)

    def release(self, conn: Http1Connection) -> None:
        """Back to the pool after a complete, keep-alive answer; anything else is closed."""
        if not conn.reusable:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        oldest = self._idle[0]
        if conn.idle_since - oldest.idle_since >= self.idle_timeout:
            self._idle.popleft().close()
        self._room()

    def forget(self, conn: Http1Connection) -> None:
        """Called by a connection once it is closed, whoever closed it."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._room()

    def _room(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let connection_lost run
