"""The baseline: a plain, naive but honest aiohttp reverse proxy (no signing, no logging).

- one ``ClientSession`` per process (pooled keep-alive connections to the upstream);
- copies the request headers minus hop-by-hop ones (and ``Host``/``Content-Length``, which
  the client sets), reads the whole request body, sends it upstream;
- streams the response back, minus hop-by-hop headers.

It runs on the same event loop as the gateway (the stock asyncio loop unless told otherwise)
and, like ``hmac-gateway serve --workers N``, runs N spawned processes sharing the port with
SO_REUSEPORT when N > 1.

    python -m bench.baseline_proxy --port 9100 --upstream http://127.0.0.1:9000 [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
from collections.abc import AsyncIterator
from types import FrameType

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from bench import serving

# RFC 9110 §7.6.1, plus what the client library sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
_CHUNK = 64 * 1024
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def build_app(upstream: str) -> web.Application:
    base = URL(upstream)
    if not base.host:
        raise ValueError(f"upstream {upstream!r} has no host")
    host = base.host
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            auto_decompress=False,  # pass bytes through untouched
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not share cookies between clients
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        yield
        await app[SESSION].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in request.headers.items() if name.lower() not in _REQUEST_DROP
        )
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        url = URL.build(scheme=base.scheme, host=host, port=base.port, path=path, query_string=query, encoded=True)
        async with app[SESSION].request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def _serve(host: str, port: int, upstream: str, loop: str, reuse_port: bool) -> None:
    serving.run(build_app(upstream), host, port, loop=loop, reuse_port=reuse_port)


def serve_workers(host: str, port: int, upstream: str, loop: str, workers: int) -> int:
    """N spawned processes on one port (SO_REUSEPORT); SIGTERM/SIGINT are forwarded."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_serve, args=(host, port, upstream, loop, True)) for _ in range(workers)]

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.start()
    code = 0
    for proc in procs:
        proc.join()
        if proc.exitcode:
            code = code or 1
            forward(signal.SIGTERM, None)
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--loop", choices=serving.LOOPS, default="asyncio", help="default: the gateway's loop")
    args = parser.parse_args(argv)
    if args.workers > 1:
        sys.exit(serve_workers(args.host, args.port, args.upstream, args.loop, args.workers))
    _serve(args.host, args.port, args.upstream, args.loop, reuse_port=False)


if __name__ == "__main__":
    main()
