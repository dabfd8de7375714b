"""A lean Redis client (RESP2) for the replay store: one pipelined connection per process.

Why not redis-py: its asyncio client spends ~120-190 µs of CPU per ``SET`` (connection pool,
retry wrappers, a pure-Python reply parser), more than the whole rest of a verified request.
Here a command is one ``transport.write`` and its reply is parsed from the connection's
buffer; concurrent commands share the connection (Redis answers them in order), so a burst of
requests is pipelined on its own.

Invariants:
- every command is bounded by ``timeout``; a timed-out or failed connection is dropped (its
  replies could no longer be matched to commands) and the next command reconnects;
- failures are ``RedisUnavailable`` (could not ask) or ``RedisReplyError`` (Redis said no,
  with its error code, e.g. ``OOM``); neither carries the URL or the password;
- only what the replay store needs: AUTH and SELECT at connect, then any command whose reply
  is a simple string, error, integer or bulk string (no arrays, no RESP3, no pub/sub).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from gateway.replay.address import RedisAddress


class RedisError(Exception):
    """Base of the errors below."""


class RedisUnavailable(RedisError):
    """Redis could not be asked: refused, unreachable, timed out, or the connection broke."""


class RedisReplyError(RedisError):
    """Redis answered with an error; ``code`` is its first word (``OOM``, ``WRONGPASS``, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


Reply = bytes | int | None


def encode_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Reply | RedisReplyError]] = deque()
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, command: bytes) -> asyncio.Future[Reply | RedisReplyError]:
        """Queue ``command``; every command queued in one turn of the event loop goes out in one
        write (and their replies mostly come back in one read)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply | RedisReplyError] = loop.create_future()
        self.waiters.append(waiter)
        self.outgoing.append(command)
        if len(self.outgoing) == 1:
            loop.call_soon(self._flush)
        return waiter

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while buffer:
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            kind = buffer[0]
            reply: Reply | RedisReplyError
            if kind == 0x2B:  # +simple string
                reply, used = bytes(buffer[1:end]), end + 2
            elif kind == 0x3A:  # :integer
                reply, used = int(buffer[1:end]), end + 2
            elif kind == 0x24:  # $bulk string, $-1 = nil
                length = int(buffer[1:end])
                if length < 0:
                    reply, used = None, end + 2
                else:
                    used = end + 2 + length + 2
                    if len(buffer) < used:
                        return  # the rest of it has not arrived yet
                    reply = bytes(buffer[end + 2 : end + 2 + length])
            elif kind == 0x2D:  # -error
                reply, used = RedisReplyError(buffer[1:end].decode("utf-8", "replace")), end + 2
            else:  # arrays, RESP3: nothing the replay store asks for
                self.abort()
                return
            del buffer[:used]
            if not self.waiters:  # a reply nobody asked for: the stream is out of step
                self.abort()
                return
            waiter = self.waiters.popleft()
            if not waiter.done():  # its caller may have given up (cancelled)
                waiter.set_result(reply)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RedisUnavailable("the connection to Redis was lost"))


def _ignore(waiter: asyncio.Future[Reply | RedisReplyError]) -> None:
    if not waiter.cancelled():
        waiter.exception()  # retrieved, so asyncio does not log it as lost


def _expire(waiter: asyncio.Future[Reply | RedisReplyError]) -> None:
    if not waiter.done():
        waiter.set_exception(RedisUnavailable("Redis did not answer in time"))


class RedisClient:
    def __init__(self, url: str | RedisAddress, *, timeout: float = 0.5) -> None:
        self.address = url if isinstance(url, RedisAddress) else RedisAddress.parse(url)
        self.timeout = timeout
        self._protocol: _RespProtocol | None = None
        self._connect_lock = asyncio.Lock()
        self.connections_made = 0

    async def execute(self, *args: bytes, asking: bool = False) -> Reply:
        """Send one command; its reply, or RedisUnavailable / RedisReplyError. ``asking`` sends
        ``ASKING`` right before it on the same connection (a cluster's ``ASK`` redirection)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        if asking:
            # Its +OK (or the connection's loss) is of no interest: the command's own reply says it all.
            protocol.send(b"*1\r\n$6\r\nASKING\r\n").add_done_callback(_ignore)
        waiter = protocol.send(encode_command(*args))
        timer = asyncio.get_running_loop().call_later(self.timeout, _expire, waiter)
        try:
            reply = await waiter
        except RedisUnavailable:
            protocol.abort()  # replies still on their way would answer the wrong commands
            raise
        finally:
            timer.cancel()
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def _connect(self) -> _RespProtocol:
        async with self._connect_lock:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol  # another command connected while this one waited
            a = self.address
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeout):
                    if a.path is not None:
                        _, protocol = await loop.create_unix_connection(_RespProtocol, a.path)
                    else:
                        context = ssl.create_default_context() if a.tls else None
                        _, protocol = await loop.create_connection(
                            _RespProtocol, a.host, a.port, ssl=context, server_hostname=a.host if a.tls else None
                        )
                    try:
                        await self._handshake(protocol)
                    except BaseException:
                        protocol.abort()  # refused, timed out or cancelled: never leave the socket behind
                        raise
            except TimeoutError:
                raise RedisUnavailable("Redis did not answer in time") from None
            except (OSError, ssl.SSLError):
                raise RedisUnavailable("Redis could not be reached") from None
            self._protocol = protocol
            self.connections_made += 1
            return protocol

    async def _handshake(self, protocol: _RespProtocol) -> None:
        a = self.address
        handshake = []
        if a.password is not None:
            auth = (a.username.encode(), a.password.encode()) if a.username else (a.password.encode(),)
            handshake.append(protocol.send(encode_command(b"AUTH", *auth)))
        if a.db:
            handshake.append(protocol.send(encode_command(b"SELECT", str(a.db).encode())))
        for reply in await asyncio.gather(*handshake):
            if isinstance(reply, RedisReplyError):
                raise reply

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None
