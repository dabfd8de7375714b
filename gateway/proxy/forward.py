"""Forwarding to an upstream: one connection pool per upstream, answers relayed back.

Invariants:
- where a request goes is config (host, port, base path) plus the request's *path and query
  only*; nothing in the request (Host, absolute-form target) can choose it;
- the path and query are sent byte for byte as they were signed, and ``Host`` is the
  upstream's authority, the value the signature covers;
- upstream failures become ``upstream_unavailable`` (502) and timeouts ``upstream_timeout``
  (504) with no internal detail; nothing is shared between clients (no cookie jar);
- once an answer has started, a failure aborts the client connection (``UpstreamAborted``);
- a client that takes no data for ``write_timeout`` (or ``busy_write_timeout`` while others wait
  for an upstream connection, see ``pool``) is dropped (``ClientStalled``) and the upstream
  connection closed, never returned to the pool half-read;
- an upstream response head past ``max_response_headers`` / ``max_response_head_bytes`` /
  ``max_reason_bytes`` is ``upstream_unavailable`` (502), read no further, its connection closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import Reason, RequestRejected
from gateway.http_vocab import HOP_BY_HOP, connection_tokens
from gateway.proxy.http1 import IDEMPOTENT, Http1Connection
from gateway.proxy.http1_head import (
    MAX_REASON_BYTES,
    MAX_RESPONSE_HEAD_BYTES,
    MAX_RESPONSE_HEADERS,
    HeadLimits,
    ResponseHead,
    UpstreamError,
    request_head,
)
from gateway.proxy.pool import BUSY_WRITE_TIMEOUT, WRITE_TIMEOUT, ConnectionPool
from gateway.proxy.tls import UpstreamTLS, client_context

_BUFFER_LIMIT = 1024 * 1024  # answers up to this size (and of known length) are relayed in one piece
_BODYLESS = frozenset({101, 204, 304})


class UpstreamAborted(Exception):
    """The upstream failed after the response had started: the client connection was aborted,
    because a second response (or a silently truncated one) would corrupt it."""

    def __init__(self, response: web.StreamResponse, reason: Reason) -> None:
        super().__init__(reason.value)
        self.response = response
        self.reason = reason


class ClientStalled(UpstreamAborted):
    """Our client took no data within the write deadline while an answer was relayed to it:
    its connection was aborted and the upstream connection closed (logged as ``client_stalled``)."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    scheme: str
    host: str
    port: int
    base_path: str
    authority: str  # what a client puts in Host, lower case, default port omitted

    @classmethod
    def parse(cls, url: str) -> UpstreamTarget:
        parts = urlsplit(url)
        scheme = parts.scheme
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == default else f"{shown}:{port}"
        return cls(scheme, host, port, parts.path.rstrip("/"), authority.lower())


class Upstream:
    """One upstream: its pooled connections (``pool.ConnectionPool``) and how to relay an answer."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        limit: int = 256,
        max_response_headers: int = MAX_RESPONSE_HEADERS,
        max_response_head_bytes: int = MAX_RESPONSE_HEAD_BYTES,
        max_reason_bytes: int = MAX_REASON_BYTES,
        write_timeout: float = WRITE_TIMEOUT,
        busy_write_timeout: float = BUSY_WRITE_TIMEOUT,
        observe_latency: Callable[[float], None] | None = None,
        tls: UpstreamTLS | None = None,
    ) -> None:
        self.target = UpstreamTarget.parse(url)
        # built now, so a bad CA bundle or key is a start-up error, not a failure per request
        self.ssl_context = client_context(tls or UpstreamTLS()) if self.target.scheme == "https" else None
        self.observe_latency = observe_latency  # seconds from sending to the answer's head
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit = limit
        self.head_limits = HeadLimits(max_response_headers, max_response_head_bytes, max_reason_bytes)
        self.write_timeout = write_timeout
        self.busy_write_timeout = busy_write_timeout
        self._pool: ConnectionPool | None = None

    async def start(self) -> None:
        t = self.target
        self._pool = ConnectionPool(
            t.host,
            t.port,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            limit=self.limit,
            head_limits=self.head_limits,
            write_timeout=self.write_timeout,
            busy_write_timeout=self.busy_write_timeout,
            ssl_context=self.ssl_context,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> ConnectionPool:
        assert self._pool is not None, "Upstream.start() was not awaited"
        return self._pool

    async def forward(
        self,
        request: web.Request,
        *,
        path: str,
        query: str | None,
        headers: CIMultiDict[str],
        body: bytes,
        request_id: str,
    ) -> web.StreamResponse:
        """Send upstream and relay the answer to ``request``'s client."""
        target = path if query is None else f"{path}?{query}"
        method = request.method
        try:
            head = request_head(method, target, self.target.authority, list(headers.items()), len(body))
        except ValueError:
            raise RequestRejected(Reason.BAD_REQUEST, "a header value cannot be forwarded") from None
        response: web.StreamResponse | None = None
        conn: Http1Connection | None = None
        try:
            conn = await self.pool.acquire()
            started = time.perf_counter()
            conn.send(method, head, body)
            try:
                answer = await conn.read_head()
            except UpstreamError as exc:
                # A kept-alive connection the upstream closed just as we used it: send again on a
                # new one, if nothing came back and the method allows it (RFC 9110 §9.2.2).
                if not (conn.reused and not conn.got_data and exc.reason is Reason.UPSTREAM_UNAVAILABLE):
                    raise
                if method not in IDEMPOTENT:
                    raise
                conn.close()
                conn = await self.pool.acquire(fresh=True)
                started = time.perf_counter()
                conn.send(method, head, body)
                answer = await conn.read_head()
            if self.observe_latency is not None:
                self.observe_latency(time.perf_counter() - started)
            out_headers = self._response_headers(answer, request_id)
            length = answer.content_length
            if (
                length is not None
                and length <= _BUFFER_LIMIT
                and method != "HEAD"
                and answer.status not in _BODYLESS
                and ("Content-Type" in out_headers or length == 0)
            ):
                # Small answers of known length: one read, one write, no streaming loop.
                payload = await conn.read_all()
                self.pool.release(conn)
                conn = None
                return web.Response(status=answer.status, reason=answer.reason, body=payload, headers=out_headers)
            response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=out_headers)
            pool = self.pool
            await pool.write_to_client(conn, response.prepare(request))
            while chunk := await conn.read_chunk():
                await pool.write_to_client(conn, response.write(chunk))
            await pool.write_to_client(conn, response.write_eof())
            pool.release(conn)
            conn = None
            return response
        except UpstreamError as exc:
            reason, detail = exc.reason, exc.detail
        except TimeoutError:  # only write_to_client raises it: our client took no data in time
            if request.transport is not None:
                request.transport.abort()
            assert response is not None
            raise ClientStalled(response, Reason.CLIENT_STALLED) from None
        finally:
            if conn is not None:
                conn.close()  # failed or cancelled half-way: never reused
        if response is not None and response.prepared:
            # Headers (and maybe part of the body) are out: the only honest signal left is to
            # drop the connection, so no client or pooling proxy mistakes it for a whole answer.
            if request.transport is not None:
                request.transport.abort()
            raise UpstreamAborted(response, reason)
        raise RequestRejected(reason, detail)

    @staticmethod
    def _response_headers(answer: ResponseHead, request_id: str) -> CIMultiDict[str]:
        listed = [value for name, value in answer.headers if name.lower() == "connection"]
        drop = HOP_BY_HOP | connection_tokens(listed) if listed else HOP_BY_HOP
        out: CIMultiDict[str] = CIMultiDict(
            [(name, value) for name, value in answer.headers if name.lower() not in drop]
        )
        out["X-Request-Id"] = request_id
        return out
