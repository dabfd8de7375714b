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
  streaming to a slow client costs bounded memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass

import httptools

from gateway.errors import Reason

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_IDLE_TIMEOUT = 15.0  # seconds an idle keep-alive connection is kept (aiohttp's default too)
# RFC 9110 §9.2.2: safe to send again when a reused connection turns out to be closed.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The upstream could not be reached, did not answer in time, or answered nonsense."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _unavailable(detail: str) -> UpstreamError:
    return UpstreamError(Reason.UPSTREAM_UNAVAILABLE, detail)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None


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
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._head_only = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._status = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
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
            self._error = _unavailable("the upstream closed the connection")
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
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self._fail(self._error or _unavailable("the upstream sent an answer we do not accept"))
            self.close()
        except httptools.HttpParserError:
            self._fail(_unavailable("the upstream sent a malformed response"))
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
                self._fail(_unavailable("the upstream closed the connection"))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._stray = True
        self._status = b""
        self._raw_headers = []

    def on_status(self, status: bytes) -> None:
        self._status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self._error = _unavailable("the upstream switched protocols, which was not asked for")
                raise RuntimeError  # stops llhttp; data_received turns it into the error above
            self._interim = True  # 100 Continue, 102, 103: the real answer follows
            return
        length: int | None = None
        chunked = False
        connection_close = False
        headers: list[tuple[str, str]] = []
        try:
            for raw_name, raw_value in self._raw_headers:
                name = raw_name.decode("ascii")
                value = raw_value.decode("utf-8")
                lower = name.lower()
                if lower == "content-length":
                    length = int(value)
                elif lower == "transfer-encoding":
                    # RFC 9112 §6.3: chunked framing only when chunked is the *last* coding (llhttp
                    # agrees); otherwise the body runs to the end of the connection.
                    chunked = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
                elif lower == "connection":
                    connection_close = connection_close or "close" in value.lower()
                headers.append((name, value))
        except (UnicodeDecodeError, ValueError):
            self._error = _unavailable("the upstream sent a response header we cannot relay (not UTF-8)")
            raise RuntimeError from None
        bodyless = self._head_only or status in (204, 304)
        self._close_delimited = not bodyless and length is None and not chunked
        self._keep_alive = self._parser.get_http_version() == "1.1" and not connection_close
        self._head = ResponseHead(status, self._status.decode("latin-1"), headers, length)
        if self._head_only:
            self._complete = True  # llhttp cannot know a HEAD answer has no body; we do
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
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
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # the longest silence while an answer is awaited
        self.limit = limit
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
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
                raise _unavailable("the upstream could not be reached") from None
            raise
        self._connecting -= 1
        self.connections_made += 1
        if not conn.closed:
            self._open.add(conn)
        else:  # already gone (connection_lost ran first): its slot is free
            self._room()
        return conn

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


def request_head(method: str, target: str, authority: str, headers: list[tuple[str, str]], body_length: int) -> bytes:
    """The request line and header block, bytes as the client sent them (surrogateescape).

    Raises ``ValueError`` on CR, LF or NUL in any part: it would split the request.
    """
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body_length or method not in _BODYLESS_METHODS:
        lines.append(f"Content-Length: {body_length}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # Exactly one LF per line and no CR or NUL elsewhere: nothing can end a line early.
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1 or "\0" in text:
        raise ValueError("CR, LF or NUL in the request head")
    return text.encode("utf-8", "surrogateescape")


_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
