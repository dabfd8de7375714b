"""A tiny upstream that answers with what it received: for the demo loop and for ops who want
to see exactly what an upstream gets (headers, raw path, body). Loopback only."""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", errors="replace"),
            "body_base64": base64.b64encode(body).decode(),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
    )


def build_echo_app(max_body: int = 16 * 1024 * 1024) -> web.Application:
    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
