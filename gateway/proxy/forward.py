"""The upstream client: one pooled ClientSession per upstream, responses streamed back.

Invariants:
- the upstream URL is built from config plus the request's *path and query only*;
  nothing in the request (Host, absolute-form target) can choose where it goes;
- the path and query are sent byte for byte as they were signed (``encoded=True``);
- upstream failures become ``upstream_unavailable`` (502) and timeouts ``upstream_timeout``
  (504) with no internal detail; cookies are never stored across clients.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import Reason, RequestRejected
from gateway.signing.rfc9421 import HOP_BY_HOP

_CHUNK = 64 * 1024
_BUFFER_LIMIT = 1024 * 1024  # answers up to this size (and of known length) are relayed in one piece
_BODYLESS = frozenset({101, 204, 304})
# aiohttp adds these unless told not to; a proxy forwards what the client sent.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


def connection_tokens(headers: CIMultiDict[str] | web.BaseRequest | aiohttp.ClientResponse) -> set[str]:
    """Field names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1)."""
    source = headers.headers if not isinstance(headers, CIMultiDict) else headers
    tokens: set[str] = set()
    for value in source.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


class UpstreamAborted(Exception):
    """The upstream failed after the response had started: the client connection was aborted,
    because a second response (or a silently truncated one) would corrupt it."""

    def __init__(self, response: web.StreamResponse, reason: Reason) -> None:
        super().__init__(reason.value)
        self.response = response
        self.reason = reason


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
    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, limit: int = 256) -> None:
        self.target = UpstreamTarget.parse(url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str, query: str | None) -> URL:
        t = self.target
        return URL.build(scheme=t.scheme, host=t.host, port=t.port, path=path, query_string=query or "", encoded=True)

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
        """Send upstream and stream the answer back to ``request``'s client."""
        assert self._session is not None, "Upstream.start() was not awaited"
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                self.url(path, query),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            ) as upstream:
                drop = HOP_BY_HOP | connection_tokens(upstream) if "Connection" in upstream.headers else HOP_BY_HOP
                out_headers: CIMultiDict[str] = CIMultiDict()
                for name, value in upstream.headers.items():
                    if name.lower() not in drop:
                        out_headers.add(name, value)
                out_headers["X-Request-Id"] = request_id
                length = upstream.content_length
                if (
                    length is not None
                    and length <= _BUFFER_LIMIT
                    and request.method != "HEAD"
                    and upstream.status not in _BODYLESS
                    and ("Content-Type" in out_headers or length == 0)
                ):
                    # Small answers of known length: one read, one write, no streaming loop.
                    payload = await upstream.read()
                    return web.Response(
                        status=upstream.status, reason=upstream.reason, body=payload, headers=out_headers
                    )
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out_headers)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except TimeoutError:
            reason = Reason.UPSTREAM_TIMEOUT
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError):
            reason = Reason.UPSTREAM_UNAVAILABLE
        if response is not None and response.prepared:
            # Headers (and maybe part of the body) are out: the only honest signal left is to
            # drop the connection, so no client or pooling proxy mistakes it for a whole answer.
            if request.transport is not None:
                request.transport.abort()
            raise UpstreamAborted(response, reason)
        detail = (
            "the upstream did not answer in time"
            if reason is Reason.UPSTREAM_TIMEOUT
            else "the upstream could not be reached"
        )
        raise RequestRejected(reason, detail)
