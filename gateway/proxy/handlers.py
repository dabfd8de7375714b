"""Sign and verify request handling for one matched route.

Sign: read the bounded body, drop hop-by-hop and any client-supplied signature or
verified-key headers, point Host at the upstream, add Content-Digest, and sign *last*,
after every other change to what is sent.

Verify: read the bounded body, check the signature (cheap checks first, then digest and
MAC), then the replay store; only a request that passes all of it is forwarded, with the
verified key id in the route's key-id header (any client copy of it removed first).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gateway.clock import Clock
from gateway.config import RouteConfig
from gateway.errors import Reason, RequestRejected, VerificationError
from gateway.http_vocab import HOP_BY_HOP, connection_tokens
from gateway.keys.cache import KeyringCache
from gateway.proxy.forward import Upstream
from gateway.replay import ReplayStore, replay_key
from gateway.signing import rfc9421, standard_webhooks
from gateway.signing.digest import content_digest
from gateway.signing.registry import NAMES_KEY, verifier_for
from gateway.signing.registry import SIGNATURE_HEADERS as SCHEME_HEADERS
from gateway.signing.scheme import RequestView, SignatureFailure

SIGNATURE_HEADERS = frozenset({"signature", "signature-input"})
CLIENT_TOKEN_HEADER = "X-Gateway-Token"  # noqa: S105 - a header name, not a secret
# Never forwarded as the client sent them: we set them (host, content-length, request id), or
# they are for this gateway only (the client token).
_ALWAYS_DROP = HOP_BY_HOP | {"host", "content-length", "expect", "x-request-id", CLIENT_TOKEN_HEADER.lower()}


class NoncePool:
    """Signature nonces: 16 random bytes, base64url, drawn from a buffer refilled from the OS CSPRNG
    256 nonces at a time (one getrandom call instead of one per request). Nonces are public and
    must be unpredictable and unique, which this keeps; nothing here is secret."""

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._buffer = b""
        self._offset = 0

    def next(self) -> str:
        if self._offset >= len(self._buffer):
            self._buffer = os.urandom(16 * self._batch)
            self._offset = 0
        chunk = self._buffer[self._offset : self._offset + 16]
        self._offset += 16
        return base64.urlsafe_b64encode(chunk).rstrip(b"=").decode()


@dataclass(slots=True)
class Outcome:
    """What the access log line says about one request."""

    route: str = ""
    outcome: str = ""
    reason: str = ""
    key_id: str = ""
    base_sha256: str = ""
    debug_base: str = ""  # only set on routes with debug_signature_base = true


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) before reading more than ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestRejected(Reason.BODY_TOO_LARGE, f"limit is {limit} bytes")
    if declared == 0 or (declared is None and not request.body_exists):
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            # One copy at the end (none for a body that came in one piece), instead of a
            # bytearray regrown as it fills and copied again into bytes.
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestRejected(Reason.BODY_TOO_LARGE, f"limit is {limit} bytes")


def _forward_headers(
    request: web.Request, drop: frozenset[str] | set[str], *, drop_underscored: bool = False
) -> CIMultiDict[str]:
    drop = drop | connection_tokens(request.headers.getall("Connection")) if "Connection" in request.headers else drop
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        # "X-Gateway-Key_Id" must not slip past as a different header: CGI/WSGI upstreams
        # read "_" and "-" alike. Behind a verify route no "_" name passes at all: a twin of a
        # signed field ("Content_Type") would reach such an upstream as that field.
        if name.lower().replace("_", "-") not in drop and not (drop_underscored and "_" in name):
            out.add(name, value)
    return out


class RouteHandler:
    """Everything one route needs, resolved once at start."""

    def __init__(
        self,
        route: RouteConfig,
        cache: KeyringCache,
        upstream: Upstream,
        replay: ReplayStore,
        clock: Clock,
    ) -> None:
        self.route = route
        self.cache = cache
        self.upstream = upstream
        self.replay = replay
        self.clock = clock
        self.nonces = NoncePool()
        self.prefix = route.path_prefix.rstrip("/")
        key_id_header = route.key_id_header.lower()
        # a sign route drops what a client sent in any scheme's signature headers: only ours go out
        every_signature_header = frozenset().union(*SCHEME_HEADERS.values())
        if route.mode == "sign":
            self.components = rfc9421.parse_components(route.components)
            self.components_with_type = (
                self.components
                if any(c.identifier == '"content-type"' for c in self.components)
                else (*self.components, rfc9421.Component.parse("content-type"))
            )
            self.drop = frozenset(_ALWAYS_DROP | every_signature_header | {"content-digest", key_id_header})
        else:
            self.verifier = verifier_for(route.scheme, route.verify_settings)
            keep = route.keep_signature_headers
            own = SCHEME_HEADERS[route.scheme]
            self.drop = frozenset(_ALWAYS_DROP | {key_id_header} | (set() if keep else own))

    def matches(self, path: str) -> bool:
        prefix = self.prefix
        return not prefix or path == prefix or path.startswith(prefix + "/")

    def upstream_path(self, path: str) -> str:
        if self.route.strip_prefix and self.prefix:
            path = path[len(self.prefix) :] or "/"
        return self.upstream.target.base_path + path

    async def handle(
        self, request: web.Request, path: str, query: str | None, request_id: str, outcome: Outcome
    ) -> web.StreamResponse:
        keyring = self.cache.keyring
        if keyring is None:
            raise RequestRejected(Reason.KEYRING_UNAVAILABLE, "the keyring for this route is not loaded yet")
        headers = _forward_headers(request, self.drop, drop_underscored=self.route.mode == "verify")
        target_path = self.upstream_path(path)
        if self.route.mode == "sign":
            body = await read_body(request, self.route.max_body_bytes)
            self._sign(request, headers, target_path, query, body, outcome)
        else:
            body = await self._verify(request, headers, path, query, outcome)
        headers["X-Request-Id"] = request_id
        outcome.outcome = "forwarded"
        return await self.upstream.forward(
            request, path=target_path, query=query, headers=headers, body=body, request_id=request_id
        )

    def _sign(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        target_path: str,
        query: str | None,
        body: bytes,
        outcome: Outcome,
    ) -> None:
        keyring = self.cache.keyring
        assert keyring is not None
        key = keyring.signing_key
        if self.route.scheme == "standard-webhooks":
            now = self.clock()
            keys = keyring.verifying_keys(now) if self.route.sign_with == "every-active-key" else [key]
            if key not in keys:  # the signing key always signs, first
                keys.insert(0, key)
            msg_id = "msg_" + self.nonces.next()
            headers.update(standard_webhooks.sign_headers(keys, msg_id, int(now), body))
            outcome.key_id = ",".join(k.id for k in keys)[:128]
            return
        headers["Content-Digest"] = content_digest(body)
        view = RequestView(
            method=request.method,
            authority=self.upstream.target.authority,
            path=target_path,
            query=query,
            headers=headers,
            scheme=self.upstream.target.scheme,
        )
        components = self.components_with_type if "Content-Type" in headers else self.components
        try:
            signed = rfc9421.sign(
                view,
                key,
                components,
                created=int(self.clock()),
                nonce=self.nonces.next(),
                tag=self.route.tag,
                label=self.route.label,
            )
        except rfc9421.ComponentError as exc:
            raise RequestRejected(Reason.BAD_REQUEST, f"cannot sign this request: {exc}") from None
        headers["Signature-Input"] = signed.signature_input
        headers["Signature"] = signed.signature
        outcome.key_id = key.id

    async def _verify(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        path: str,
        query: str | None,
        outcome: Outcome,
    ) -> bytes:
        """Verify, reading the body only once every header check has passed; returns the body."""
        keyring = self.cache.keyring
        assert keyring is not None
        now = self.clock()
        authority = request.headers.get("Host", "")
        if self.route.authorities and authority.lower() not in self.route.authorities:
            # A signature made for another service sharing this keyring must not replay here.
            raise RequestRejected(Reason.MISDIRECTED, "this route does not serve that Host")
        view = RequestView(
            method=request.method,
            authority=authority,
            path=path,
            query=query,
            headers=request.headers,
            scheme=self.route.public_scheme,
        )
        try:
            pending = self.verifier.check_headers(view, keyring, now)
            body = await read_body(request, self.route.max_body_bytes)
            verified = pending.check_body(body)
        except VerificationError as exc:
            outcome.key_id = exc.key_id[:128]
            if exc.reason is Reason.UNKNOWN_KEY:
                self.cache.request_early_refresh()
            if isinstance(exc, SignatureFailure):
                outcome.base_sha256 = exc.base_sha256
                if self.route.debug_signature_base and exc.signature_base is not None:
                    outcome.debug_base = exc.signature_base.decode("ascii")
            raise
        outcome.key_id = verified.key_id
        outcome.base_sha256 = verified.base_sha256
        covered = verified.covered_fields
        if any("_" in name for name in covered) or (
            "Connection" in request.headers and connection_tokens(request.headers.getall("Connection")) & covered
        ):
            # We would drop a field the sender signed (Connection names it, or its name has a
            # "_"): the upstream would get a request other than the one that verified.
            raise RequestRejected(Reason.BAD_REQUEST, "a field the signature covers cannot be forwarded")
        if self.route.replay_protection:
            # Until the scheme's replay_until, which rests on what was signed, not on this
            # instance's clock: instances sharing the store keep the token equally long.
            ttl = max(1.0, verified.replay_until - now)
            scope = verified.key_id if self.route.scheme in NAMES_KEY else ""
            fresh = await self.replay.remember(replay_key(self.route.keyring, scope, verified.replay_token), ttl)
            if not fresh:
                raise VerificationError(Reason.REPLAYED, "this signature was already used", key_id=verified.key_id)
        headers[self.route.key_id_header] = verified.key_id
        return body
