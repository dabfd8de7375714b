"""Listener applications and the runtime they share.

Several listeners (a sign listener, a verify listener, ...) share one keyring cache per
keyring, one replay store and one pooled client per upstream, so those resources live in a
``Runtime`` that outlives the per-listener ``web.Application``s. Each resource is opened by
its own async context manager (code before ``yield`` starts it, code after cleans up),
stacked by ``open_runtime``.

Invariants:
- ``CONNECT`` and absolute-form / asterisk-form request targets are refused: this is a
  reverse proxy, never a forward one, and the request never chooses the upstream;
- every failure answers problem+json with a reason code; an unexpected exception is
  logged with its traceback and answered ``500 internal_error`` with no detail;
- one JSON log line per request with the request id that is forwarded upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.clock import Clock, system_clock
from gateway.config import GatewayConfig, ListenerConfig, is_loopback
from gateway.errors import PROBLEM_CONTENT_TYPE, Reason, RequestRejected, problem_body
from gateway.http_vocab import check_canonical_path
from gateway.keys.cache import KeyringCache
from gateway.keys.factory import make_cache
from gateway.observability import AccessLog
from gateway.proxy.forward import Upstream, UpstreamAborted
from gateway.proxy.handlers import CLIENT_TOKEN_HEADER, Outcome, RouteHandler
from gateway.replay import MemoryReplayStore, ReplayStore
from gateway.replay_redis import RedisReplayStore

errlog = logging.getLogger("gateway.proxy")

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime")
LISTENER_KEY: web.AppKey[ListenerConfig] = web.AppKey("listener")
_OUTCOME: web.RequestKey[Outcome] = web.RequestKey("outcome", Outcome)
_REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class RequestIds:
    """Request ids: a client's well-formed X-Request-Id, else a per-process random prefix plus a
    counter (unique across processes and restarts, and cheaper than a uuid4 per request)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:12]
        self.counter = itertools.count(1)

    def for_request(self, request: web.Request) -> str:
        incoming = request.headers.get("X-Request-Id", "")
        if 0 < len(incoming) <= 128 and all(c in _REQUEST_ID_CHARS for c in incoming):
            return incoming
        return f"{self.prefix}{next(self.counter):08x}"


@dataclass
class Runtime:
    config: GatewayConfig
    clock: Clock
    caches: dict[str, KeyringCache] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    replay: ReplayStore = field(default_factory=MemoryReplayStore)
    access_log: AccessLog = field(default_factory=AccessLog)
    request_ids: RequestIds = field(default_factory=RequestIds)
    draining: bool = False

    async def load_keyrings(self) -> dict[str, str]:
        """Initial load of every keyring; returns {name: error} for those that failed."""
        results = await asyncio.gather(*(c.refresh() for c in self.caches.values()))
        return {
            name: cache.last_error or "failed"
            for (name, cache), ok in zip(self.caches.items(), results, strict=True)
            if not ok
        }

    def ready(self) -> bool:
        now = self.clock()
        return not self.draining and all(c.is_ready(now) for c in self.caches.values())

    def keyring_status(self) -> dict[str, object]:
        now = self.clock()
        return {name: cache.status(now) for name, cache in self.caches.items()}


@contextlib.asynccontextmanager
async def keyring_caches(runtime: Runtime, refresh: bool) -> AsyncIterator[None]:
    for name, kc in runtime.config.keyrings.items():
        runtime.caches[name] = make_cache(kc.settings, runtime.clock)
    tasks = [asyncio.ensure_future(c.run()) for c in runtime.caches.values()] if refresh else []
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def upstream_pools(runtime: Runtime) -> AsyncIterator[None]:
    for route in runtime.config.routes:
        upstream = Upstream(route.upstream, connect_timeout=route.connect_timeout, read_timeout=route.upstream_timeout)
        await upstream.start()
        runtime.upstreams[route.name] = upstream
    try:
        yield
    finally:
        await asyncio.gather(*(u.close() for u in runtime.upstreams.values()))


@contextlib.asynccontextmanager
async def replay_store(runtime: Runtime) -> AsyncIterator[None]:
    config = runtime.config
    if config.replay_store == "redis":
        runtime.replay = RedisReplayStore(config.redis_url, prefix=config.redis_key_prefix)
    else:
        runtime.replay = MemoryReplayStore(config.replay_max_entries, clock=runtime.clock)
    try:
        yield
    finally:
        await runtime.replay.close()


@contextlib.asynccontextmanager
async def open_runtime(
    config: GatewayConfig, *, clock: Clock = system_clock, refresh: bool = True
) -> AsyncIterator[Runtime]:
    """Open every shared resource. ``refresh=False`` leaves refreshing to the caller (tests)."""
    runtime = Runtime(config=config, clock=clock)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(replay_store(runtime))
        await stack.enter_async_context(keyring_caches(runtime, refresh))
        await stack.enter_async_context(upstream_pools(runtime))
        stack.callback(runtime.access_log.close)  # the last lines, before the process exits
        yield runtime


def _problem(reason: Reason, detail: str, request_id: str, **extra: object) -> web.Response:
    response = web.Response(
        status=reason.status,
        body=problem_body(reason, detail, request_id, **extra),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    response.headers["X-Request-Id"] = request_id
    if reason is Reason.BODY_TOO_LARGE:
        response.force_close()  # do not read (or wait for) the rest of an oversized body
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_listener_app(runtime: Runtime, listener: ListenerConfig) -> web.Application:
    routes = sorted(
        (
            RouteHandler(
                route,
                runtime.caches[route.keyring],
                runtime.upstreams[route.name],
                runtime.replay,
                runtime.clock,
            )
            for route in runtime.config.routes_for(listener.name)
        ),
        key=lambda h: len(h.prefix),
        reverse=True,
    )

    token = listener.client_token.encode() if listener.client_token else None

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request, routed or not: request id, refusals, problem mapping, one log line."""
        started = time.perf_counter()
        request_id = runtime.request_ids.for_request(request)
        outcome = Outcome()
        request[_OUTCOME] = outcome
        request[_REQUEST_ID] = request_id
        status = 500
        try:
            if request.method == "CONNECT":
                raise RequestRejected(Reason.METHOD_NOT_ALLOWED, "CONNECT is refused: this is not a forward proxy")
            if not request.raw_path.startswith("/"):
                raise RequestRejected(Reason.ABSOLUTE_FORM_TARGET, "send origin-form targets (/path?query)")
            check_canonical_path(request.raw_path)
            if token is not None and not _health_request(request):
                offered = request.headers.get(CLIENT_TOKEN_HEADER, "").encode()
                if not hmac.compare_digest(offered, token):
                    raise RequestRejected(Reason.CLIENT_TOKEN_REQUIRED, f"send {CLIENT_TOKEN_HEADER}")
            response = await handler(request)
            status = response.status
            return response
        except RequestRejected as exc:
            outcome.outcome = "rejected"
            outcome.reason = exc.reason.value
            status = exc.reason.status
            extra = {"signature_base": outcome.debug_base} if outcome.debug_base else {}
            return _problem(exc.reason, exc.detail, request_id, **extra)
        except UpstreamAborted as exc:
            outcome.outcome = "upstream_aborted"
            outcome.reason = exc.reason.value
            status = exc.reason.status
            return exc.response  # already prepared; its connection is aborted
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # the client went away; nothing to answer
            outcome.outcome = "client_closed"
            raise
        except Exception:
            errlog.exception("unhandled error", extra={"request_id": request_id, "route": outcome.route})
            outcome.outcome = "error"
            outcome.reason = Reason.INTERNAL_ERROR.value
            return _problem(Reason.INTERNAL_ERROR, "", request_id)
        finally:
            runtime.access_log.write(
                {
                    "request_id": request_id,
                    "listener": listener.name,
                    "route": outcome.route,
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "outcome": outcome.outcome,
                    "reason": outcome.reason,
                    "key_id": outcome.key_id,
                    "base_sha256": outcome.base_sha256,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )

    async def dispatch(request: web.Request) -> web.StreamResponse:
        outcome = request[_OUTCOME]
        path, sep, query_text = request.raw_path.partition("?")
        query = query_text if sep else None
        if _health_request(request):
            outcome.outcome = "health"
            return _health(runtime, path, request[_REQUEST_ID], is_loopback(request.remote or ""))
        for handler in routes:
            if handler.matches(path):
                outcome.route = handler.route.name
                return await handler.handle(request, path, query, request[_REQUEST_ID], outcome)
        raise RequestRejected(Reason.NO_ROUTE, "no route matches this path")

    app = web.Application(middlewares=[edge], handler_args={"max_field_size": 16384})
    app[RUNTIME_KEY] = runtime
    app[LISTENER_KEY] = listener
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


def _health_request(request: web.Request) -> bool:
    return (
        request.app[LISTENER_KEY].health_endpoints
        and request.raw_path in ("/healthz", "/readyz")
        and request.method in ("GET", "HEAD")
    )


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
