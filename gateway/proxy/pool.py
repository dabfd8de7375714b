"""Keep-alive connections to one upstream, at most ``limit`` open at once, and the rules for
holding one while an answer is relayed to a client.

Invariants:
- a connection goes back to the pool only if ``Http1Connection.reusable``, else it is closed;
- waiting is bounded: connecting by ``connect_timeout``, which is also the longest wait in all
  for a free connection at the limit (504 ``upstream_timeout``, "no connection to the upstream
  became free in time");
- a connection never waits forever on our client either (``write_to_client``): each write
  towards the client ends within ``write_timeout``, and within ``busy_write_timeout`` of its
  start once another request waits for a connection at the limit; the caller then drops the
  client and closes the connection, which is never pooled half-read.

Why evict stalled relays rather than cap connections per client: behind a load balancer every
client shares one address, so a per-address cap would throttle everyone alike, while a relay
whose client has taken no data for ``busy_write_timeout`` holds a connection for nobody. Each
request that has to wait for room brings forward the deadline of the relay stalled longest
(one relay per waiter), so a crowd of non-reading clients cannot keep newcomers out for longer
than ``busy_write_timeout``; a slow but reading client loses its connection only while others
are actually waiting, and only if it took nothing for that long.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable

from gateway.errors import Reason
from gateway.proxy.http1 import Http1Connection
from gateway.proxy.http1_head import HeadLimits, UpstreamError, unavailable

_IDLE_TIMEOUT = 15.0  # seconds an idle keep-alive connection is kept (aiohttp's default too)
WRITE_TIMEOUT = 30.0  # seconds one write towards our client may take (the client took no data)
BUSY_WRITE_TIMEOUT = 1.0  # the same while another request waits for a connection at the limit
DEFAULT_HEAD_LIMITS = HeadLimits()


def _expire_wait(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        detail = "no connection to the upstream became free in time"
        waiter.set_exception(UpstreamError(Reason.UPSTREAM_TIMEOUT, detail))


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
