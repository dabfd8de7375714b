"""RFC 9421 verification compiled per route and per ``Signature-Input`` head. Pure: no I/O.

A sender sends the same label and component list on every request; only ``created``,
``nonce`` and the MAC change. For one route (one ``VerifyPolicy``) everything that depends on
the head alone -- the components, the covered fields, duplicate and coverage checks, which
line of the signature base is which -- is worked out once per head and kept in a bounded LRU
(:class:`Planner`). A request then costs: one parameter regex, one signature regex, the
freshness and key checks, one SHA-256 of the body compared as text, the base assembled from
its precompiled lines, and the MAC.

The plan only ever *accepts*. A request it cannot take whole (several signatures or field
lines, a parameter it does not know, escapes, a digest that does not match as sent, a line
break in a value, any failed check) goes to the general path in ``rfc9421``, which decides it
-- so every refusal, its reason code and its wording, is the general path's. The tests check
that both paths reach the same verdict on the same input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from cachetools import LRUCache

from gateway.keys.model import Key, Keyring
from gateway.signing import structured as sf
from gateway.signing.fastpath import fast_head
from gateway.signing.scheme import RequestView, Verified
from gateway.signing.signature_base import (
    ALGORITHM,
    DEFAULT_COMPONENTS,
    Component,
    ComponentError,
    authority_value,
    component_value,
)


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """The RFC 9421 scheme's per-route settings: what a verify route demands beyond the RFC."""

    required: frozenset[str] = frozenset(Component.parse(n).identifier for n in DEFAULT_COMPONENTS)
    window_past: int = 300
    window_future: int = 30
    require_nonce: bool = False
    require_alg: bool = False
    expected_tag: str | None = None
    max_signatures: int = 8


_INT = r"(0|[1-9][0-9]{0,14})"
# An sf-string with no escape and no ';' (a ';' would make counting parameters ambiguous).
_STR = r'"([ !#-:<-\[\]-~]*)"'
_PARAMS = re.compile(rf"(?:;(?:created={_INT}|expires={_INT}|nonce={_STR}|alg={_STR}|keyid={_STR}|tag={_STR}))*")
_SIGNATURE = re.compile(r"([a-z*][a-z0-9_\-.*]*)=:([A-Za-z0-9+/]{4,}={0,2}):")
_OWS = " \t"
_EMPTY_DIGEST = f"sha-256=:{base64.b64encode(hashlib.sha256(b'').digest()).decode()}:"


def _field(name: str) -> Callable[[RequestView], str | None]:
    def value(request: RequestView) -> str | None:
        lines = request.headers.getall(name, ())
        return lines[0].strip(_OWS) if len(lines) == 1 else None  # several lines: the general path

    return value


def _derived(component: Component) -> Callable[[RequestView], str | None]:
    def value(request: RequestView) -> str | None:
        try:
            return component_value(request, component)
        except ComponentError:
            return None

    return value


_DERIVED: dict[str, Callable[[RequestView], str | None]] = {
    "@method": lambda r: r.method,
    "@authority": authority_value,
    "@path": lambda r: r.path or "/",
    "@query": lambda r: "?" + (r.query or ""),
}


def _line(component: Component) -> Callable[[RequestView], str | None]:
    """How to read one component's value: the common ones inline, the rest by ``component_value``."""
    if component.params:
        return _derived(component)
    if component.name in _DERIVED:
        return _DERIVED[component.name]
    return _derived(component) if component.name[0] == "@" else _field(component.name)


class HeadPlan(NamedTuple):
    """What one ``label=(...)`` head means on one route, worked out once."""

    label: str
    components: tuple[Component, ...]
    inner: str  # "(...)" as sent: the start of the "@signature-params" value
    fields: frozenset[str]  # the covered header fields
    digest: bool  # Content-Digest is covered: the body must match it
    template: str  # the signature base with a {} per component value and for the params
    values: tuple[Callable[[RequestView], str | None], ...]


class Accepted(NamedTuple):
    """A request whose headers passed on the plan: what is left is digest and MAC."""

    plan: HeadPlan
    params_text: str  # the "@signature-params" value
    provided: bytes
    keys: tuple[Key, ...]
    replay_until: int
    nonce: str | None


class Planner:
    """The plans of one route, in a bounded LRU in front of which the last hit is kept."""

    def __init__(self, policy: VerifyPolicy, maxsize: int = 64) -> None:
        self.policy = policy
        self._plans: LRUCache[str, HeadPlan | None] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()  # LRU reads reorder: one lock, should threads share a route
        self._last: tuple[str, HeadPlan | None] = ("", None)

    def plan(self, head: str) -> HeadPlan | None:
        last_head, last_plan = self._last
        if head == last_head:
            return last_plan
        try:
            with self._lock:
                plan = self._plans[head]
        except KeyError:
            plan = self._compile(head)
            with self._lock:
                self._plans[head] = plan
        self._last = (head, plan)
        return plan

    def _compile(self, head: str) -> HeadPlan | None:
        """The plan for a head the policy accepts; None (the general path) for any other."""
        parsed = fast_head(head)
        if parsed is None:
            return None
        label, inner, components, fields = parsed
        identifiers = {c.identifier for c in components}
        if len(identifiers) != len(components) or not self.policy.required <= identifiers:
            return None
        return HeadPlan(
            label=label,
            components=components,
            inner=inner,
            fields=fields,
            digest='"content-digest"' in identifiers,
            template="\n".join(
                [
                    *(c.identifier.replace("{", "{{").replace("}", "}}") + ": {}" for c in components),
                    '"@signature-params": {}',
                ]
            ),
            values=tuple(_line(c) for c in components),
        )

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> Accepted | None:
        """Every check ``rfc9421.check_headers`` makes, for one canonical signature; None if
        the request is anything else or fails any of them (the general path decides it)."""
        headers = request.headers
        inputs = headers.getall("signature-input", ())
        signatures = headers.getall("signature", ())
        if len(inputs) != 1 or len(signatures) != 1:
            return None
        text = inputs[0]
        close = text.find(")")
        if close < 0 or len(text) > sf.MAX_LENGTH:
            return None
        plan = self.plan(text[: close + 1])
        if plan is None:
            return None
        params_text = text[close + 1 :]
        match = _PARAMS.fullmatch(params_text)
        if match is None:
            return None
        groups = match.groups()
        created_text, expires_text, nonce, alg, key_id, tag = groups
        given = 6 - groups.count(None)
        if params_text.count(";") != given or created_text is None:
            return None  # a parameter given twice, or no created
        policy = self.policy
        if alg is None:
            if policy.require_alg:
                return None
        elif alg != ALGORITHM:
            return None
        if (nonce is None and policy.require_nonce) or (policy.expected_tag is not None and tag != policy.expected_tag):
            return None
        created = int(created_text)
        if now - created > policy.window_past or created - now > policy.window_future:
            return None
        if expires_text is not None and now >= int(expires_text):
            return None
        signature = signatures[0]
        sig = _SIGNATURE.fullmatch(signature)
        if sig is None or sig[1] != plan.label or len(signature) > sf.MAX_LENGTH:
            return None
        provided = _canonical_b64decode(sig[2])
        if provided is None:
            return None
        if key_id is None:
            keys = tuple(keyring.verifying_keys(now))
        else:
            key = keyring.get(key_id)
            if key is None or not key.verifies_at(now):
                return None
            keys = (key,)
        if not keys:
            return None
        return Accepted(
            plan,
            plan.inner + params_text,
            provided,
            keys,
            created + policy.window_past + policy.window_future,
            nonce,
        )


def check_body(request: RequestView, body: bytes, accepted: Accepted) -> Verified | None:
    """Digest and MAC on the plan; None if they do not verify as sent (the general path decides)."""
    plan = accepted.plan
    if plan.digest:
        lines = request.headers.getall("content-digest", ())
        if len(lines) != 1:
            return None
        expected = (
            _EMPTY_DIGEST if not body else f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"
        )
        sent = lines[0]
        if not sent.isascii() or not hmac.compare_digest(sent, expected):  # compare_digest: ASCII str only
            return None  # another algorithm, several entries, non-ASCII bytes, or a mismatch
    values = [value_of(request) for value_of in plan.values]
    if None in values:
        return None  # a field absent or sent on several lines, or a derived value in error
    text = plan.template.format(*values, accepted.params_text)
    if text.count("\n") != len(plan.components) or "\r" in text or not text.isascii():
        return None  # a line break in a value, or a non-ASCII one: the general path says which
    base = text.encode("ascii")
    provided = accepted.provided
    for key in accepted.keys:
        if hmac.compare_digest(key.hmac_sha256(base), provided):
            nonce = accepted.nonce
            return Verified(  # positional: measurably cheaper than keywords on every request
                key.id,  # key_id
                nonce if nonce is not None else base64.b64encode(provided).decode(),  # replay_token
                accepted.replay_until,
                hashlib.sha256(base).hexdigest(),  # base_sha256
                plan.label,
                plan.fields,  # covered_fields
            )
    return None


def _canonical_b64decode(text: str) -> bytes | None:
    try:
        value = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None
    return value if binascii.b2a_base64(value, newline=False) == text.encode("ascii") else None
