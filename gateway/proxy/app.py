"""One ``web.Application`` per listener: the edge middleware, the ops endpoints and the routes.

Invariants:
- ``CONNECT`` and absolute-form / asterisk-form request targets are refused: this is a
  reverse proxy, never a forward one, and the request never chooses the upstream;
- every failure answers problem+json with a reason code; an unexpected exception is
  logged with its traceback and answered ``500 internal_error`` with no detail;
- one JSON log line per request with the request id that is forwarded upstream.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web, web_urldispatcher

from gateway import metrics
from gateway.config import ListenerConfig
from gateway.errors import PROBLEM_CONTENT_TYPE, Reason, RequestRejected, problem_body
from gateway.http_vocab import check_canonical_path
from gateway.proxy.forward import UpstreamAborted
from gateway.proxy.handlers import CLIENT_TOKEN_HEADER, Outcome, RouteHandler
from gateway.proxy.ops import OPS_PATHS, add_ops_routes
from gateway.proxy.runtime import Runtime

errlog = logging.getLogger("gateway.proxy")

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime")
LISTENER_KEY: web.AppKey[ListenerConfig] = web.AppKey("listener")
_OUTCOME: web.RequestKey[Outcome] = web.RequestKey("outcome", Outcome)
_REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


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
    record = _recorder(runtime, listener)

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
            if _health_request(request):
                outcome.outcome = "health"
            elif token is not None:
                offered = request.headers.get(CLIENT_TOKEN_HEADER, "").encode()
                if not hmac.compare_digest(offered, token):
                    raise RequestRejected(Reason.CLIENT_TOKEN_REQUIRED, f"send {CLIENT_TOKEN_HEADER}")
            if "Expect" in request.headers:
                await _expect(request)
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
        except ConnectionResetError:
            # The client closed mid-request (e.g. half a body, then FIN): nothing was sent
            # upstream and nobody is left to answer. One warning line (the access line), no
            # traceback: aiohttp logs an exception that leaves a handler at error level.
            status = 499
            outcome.outcome = outcome.reason = Reason.CLIENT_ABORTED.value
            return web.Response(status=400)  # never reaches the client; aiohttp drops it quietly
        except asyncio.CancelledError:
            # The client left and the server cancelled its handler (or the drain timed out).
            status = 499
            outcome.outcome = outcome.reason = Reason.CLIENT_ABORTED.value
            raise
        except Exception:
            errlog.exception("unhandled error", extra={"request_id": request_id, "route": outcome.route})
            outcome.outcome = "error"
            outcome.reason = Reason.INTERNAL_ERROR.value
            return _problem(Reason.INTERNAL_ERROR, "", request_id)
        finally:
            elapsed = time.perf_counter() - started
            record(outcome, elapsed)
            runtime.access_log.write_request(
                request_id=request_id,
                listener=listener.name,
                route=outcome.route,
                method=request.method,
                path=request.path,
                status=status,
                outcome=outcome.outcome,
                reason=outcome.reason,
                key_id=outcome.key_id,
                base_sha256=outcome.base_sha256,
                duration_ms=round(elapsed * 1000, 3),
                level="warning" if status == 499 else "info",
            )

    async def dispatch(request: web.Request) -> web.StreamResponse:
        # Routes match the *raw* path (what is signed and sent upstream byte for byte), longest
        # prefix first: aiohttp's router matches the decoded path, so it only carries the ops
        # endpoints and this one catch-all.
        outcome = request[_OUTCOME]
        path, sep, query_text = request.raw_path.partition("?")
        query = query_text if sep else None
        for handler in routes:
            if handler.matches(path):
                outcome.route = handler.route.name
                return await handler.handle(request, path, query, request[_REQUEST_ID], outcome)
        raise RequestRejected(Reason.NO_ROUTE, "no route matches this path")

    app = web.Application(middlewares=[edge], handler_args={"max_field_size": 16384})
    app[RUNTIME_KEY] = runtime
    app[LISTENER_KEY] = listener
    if listener.health_endpoints:
        add_ops_routes(app, runtime, listener, _REQUEST_ID, _defer_expect)
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=_defer_expect)
    app.router.register_resource(_PathlessTargets(dispatch))
    return app


class _PathlessRule(web_urldispatcher.AbstractRuleMatching):
    async def match(self, request: web.Request) -> bool:
        return request.method == "CONNECT" or not request.raw_path.startswith("/")

    def get_info(self) -> web_urldispatcher._InfoDict:  # aiohttp's own (private) annotation
        return {"path": self.canonical}

    @property
    def canonical(self) -> str:
        return "<pathless>"


class _PathlessTargets(web_urldispatcher.MatchedSubAppResource):
    """CONNECT (authority-form), ``OPTIONS *`` and absolute-form targets match no path, so aiohttp
    would route them to a system route whose ``Expect`` handling runs before any middleware (a
    traceback on a closing transport, a 500 on a non-UTF-8 value). The router asks this kind of
    resource before path routing: such requests reach the edge middleware, which refuses them."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(_PathlessRule(), web.Application())  # an empty sub-app: nothing is mounted
        self._route = web_urldispatcher.ResourceRoute("*", handler, self, expect_handler=_defer_expect)

    async def resolve(self, request: web.Request) -> tuple[web_urldispatcher.UrlMappingMatchInfo | None, set[str]]:
        if not await self._rule.match(request):
            return None, set()
        return web_urldispatcher.UrlMappingMatchInfo({}, self._route), set()


_REPLAY_REASONS = frozenset(
    {Reason.REPLAYED.value, Reason.REPLAY_STORE_FULL.value, Reason.REPLAY_STORE_UNAVAILABLE.value}
)
_VERIFICATION_REASONS = frozenset(r.value for r in Reason if r.status == 401)


def _recorder(runtime: Runtime, listener: ListenerConfig) -> Callable[[Outcome, float], None]:
    """What one request adds to the metrics (in the process's Recorder: a few dict increments)."""
    recorder, name = runtime.recorder, listener.name
    routes = {r.name: r for r in runtime.config.routes_for(name)}

    def record(outcome: Outcome, elapsed: float) -> None:
        recorder.count(metrics.REQUESTS, (name, outcome.route, outcome.outcome, outcome.reason))
        recorder.observe(metrics.REQUEST_SECONDS, (name, outcome.route), elapsed)
        route = routes.get(outcome.route)
        if route is None:
            return
        if outcome.outcome == "forwarded" and outcome.key_id:
            # the key id signed or verified, so it is one of the keyring's: a bounded label
            kind = metrics.VERIFICATIONS if route.mode == "verify" else metrics.SIGNATURES
            recorder.count(kind, (route.name, route.keyring, outcome.key_id))
        elif outcome.reason in _VERIFICATION_REASONS and route.mode == "verify":
            recorder.count(metrics.VERIFICATION_FAILURES, (route.name, outcome.reason))
        if outcome.reason in _REPLAY_REASONS:
            recorder.count(metrics.REPLAY_REFUSALS, (outcome.reason,))

    return record


async def _defer_expect(request: web.Request) -> None:
    """Expect is answered by the edge middleware, where refusals become problem+json and the
    request is logged; aiohttp's default handler answers from outside it (and fails on a
    non-UTF-8 value or a closing transport)."""


async def _expect(request: web.Request) -> None:
    """``100-continue`` is answered at once (the body is always read whole; Expect is never
    forwarded); any other expectation is refused with 417."""
    expect = request.headers.getall("Expect")
    if len(expect) != 1 or expect[0].strip().lower() != "100-continue":
        raise RequestRejected(Reason.EXPECTATION_FAILED, "only 'Expect: 100-continue' is supported")
    if request.version >= (1, 1):  # RFC 9110 §10.1.1: never a 1xx to an HTTP/1.0 client
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # a closing transport: client_aborted


def _health_request(request: web.Request) -> bool:
    """Probes and scrapes need no client token; only the ops routes themselves count (not POST
    /healthz, which goes to the proxy routes)."""
    route = request.match_info.route
    return route.resource is not None and route.resource.canonical in OPS_PATHS
