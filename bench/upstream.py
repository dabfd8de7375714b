"""The benchmark's real upstream: answers every request 200 with a small JSON body.

Bodies are read in full (so an upload really crosses the proxy) and dropped.

    python -m bench.upstream --port 9000 [--loop auto|asyncio|uvloop]

It is not what is being measured, so by default it uses uvloop when installed: a cheaper
upstream leaves more of the shared CPU to the proxies under test (the same for all of them).
"""

from __future__ import annotations

import argparse

from aiohttp import web

from bench import serving

BODY = b'{"ok":true,"from":"bench-upstream"}\n'


async def handle(request: web.Request) -> web.Response:
    if request.body_exists:
        while await request.content.readany():
            pass
    return web.Response(body=BODY, content_type="application/json")


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=serving.LOOPS, default="auto")
    args = parser.parse_args(argv)
    serving.run(build_app(), args.host, args.port, loop=args.loop)


if __name__ == "__main__":
    main()
