"""Operator endpoints on every listener: ``/healthz`` (alive) and ``/readyz`` (keyrings loaded,
not stale, not draining). Registered on the listener's router ahead of the proxy routes.

Invariant: keyring names, sources and errors are shown only to callers on the host
(loopback); everyone else sees the status alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import is_loopback
from gateway.proxy.runtime import Runtime

HEALTH_PATHS = ("/healthz", "/readyz")


def add_ops_routes(
    app: web.Application,
    runtime: Runtime,
    request_id: web.RequestKey[str],
    expect_handler: Callable[[web.Request], Awaitable[None]],
) -> None:
    """``GET``/``HEAD`` of the health paths; other methods fall through to the proxy routes."""

    async def health(request: web.Request) -> web.Response:
        return _health(runtime, request.path, request[request_id], is_loopback(request.remote or ""))

    for path in HEALTH_PATHS:
        # add_get registers HEAD too; Expect is answered by the listener's edge middleware
        app.router.add_get(path, health, name=path.strip("/"), expect_handler=expect_handler)


def _health(runtime: Runtime, path: str, request_id: str, detailed: bool) -> web.Response:
    if path == "/healthz":
        body: dict[str, object] = {"status": "alive", "pid": os.getpid()}
        status = 200
    else:
        ready = runtime.ready()
        status = 200 if ready else 503
        body = {"status": "ready" if ready else "not_ready", "draining": runtime.draining}
        if detailed:  # keyring names, sources and errors are for operators on the host only
            body["keyrings"] = runtime.keyring_status()
    response = web.Response(status=status, text=json.dumps(body), content_type="application/json")
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    return response
