"""Operator endpoints on every listener: ``/healthz`` (alive), ``/readyz`` (keyrings loaded,
not stale, not draining) and ``/metrics`` (Prometheus). Registered on the listener's router
ahead of the proxy routes.

Invariant: keyring names, sources, errors and metrics are shown only to operators — callers on
the host (loopback) or in the listener's ``ops_allowed_networks``; everyone else sees the
health status alone, and ``403 forbidden`` for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from gateway.config import ListenerConfig
from gateway.errors import Reason, RequestRejected
from gateway.proxy.runtime import Runtime

HEALTH_PATHS = ("/healthz", "/readyz")
METRICS_PATH = "/metrics"
OPS_PATHS = (*HEALTH_PATHS, METRICS_PATH)


def operator_check(listener: ListenerConfig) -> Callable[[str | None], bool]:
    """Whether a peer address is an operator's: loopback, or in the listener's allowed networks."""
    networks = [ipaddress.ip_network(n) for n in listener.ops_allowed_networks]

    def is_operator(remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address((remote or "").strip("[]"))
        except ValueError:
            return False  # a unix socket or no peer: not a network we were told to trust
        return address.is_loopback or any(address in network for network in networks)

    return is_operator


def add_ops_routes(
    app: web.Application,
    runtime: Runtime,
    listener: ListenerConfig,
    request_id: web.RequestKey[str],
    expect_handler: Callable[[web.Request], Awaitable[None]],
) -> None:
    """``GET``/``HEAD`` of the ops paths; other methods fall through to the proxy routes."""
    is_operator = operator_check(listener)
    registry = metrics_registry()

    async def health(request: web.Request) -> web.Response:
        return _health(runtime, request.path, request[request_id], is_operator(request.remote))

    async def exposition(request: web.Request) -> web.Response:
        if not is_operator(request.remote):
            raise RequestRejected(Reason.FORBIDDEN, "metrics are for operators' networks (ops_allowed_networks)")
        runtime.recorder.flush()  # this process's latest counts; other workers flush every second
        body = await asyncio.to_thread(generate_latest, registry)  # reads every worker's files
        response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        response.headers["Cache-Control"] = "no-store"
        return response

    for path in HEALTH_PATHS:
        # add_get registers HEAD too; Expect is answered by the listener's edge middleware
        app.router.add_get(path, health, name=path.strip("/"), expect_handler=expect_handler)
    app.router.add_get(METRICS_PATH, exposition, name="metrics", expect_handler=expect_handler)


def metrics_registry() -> CollectorRegistry:
    """Under ``serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set) the sum over every worker's
    files; else this process's registry, with its process and platform collectors."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _health(runtime: Runtime, path: str, request_id: str, detailed: bool) -> web.Response:
    if path == "/healthz":
        body: dict[str, object] = {"status": "alive", "pid": os.getpid()}
        status = 200
    else:
        ready = runtime.ready()
        status = 200 if ready else 503
        body = {"status": "ready" if ready else "not_ready", "draining": runtime.draining}
        if detailed:  # keyring names, sources and errors are for operators only
            body["keyrings"] = runtime.keyring_status()
    response = web.Response(status=status, text=json.dumps(body), content_type="application/json")
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    return response
