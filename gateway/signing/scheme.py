"""The seam between a verify route and a signature scheme: what every scheme takes and returns.

A verify route knows nothing about any one scheme. It holds a :class:`Verifier`, built once at
start by :func:`gateway.signing.registry.verifier_for` from the route's ``scheme`` name and
that scheme's own settings object, and for each request it calls:

1. ``verifier.check_headers(request, keyring, now)`` *before a byte of the body is read*: the
   cheap checks (required headers present and well formed, parameters, coverage, freshness,
   key id). It raises :class:`~gateway.errors.VerificationError` or returns a
   :class:`BodyCheck` holding what is still in the running;
2. ``body_check.check_body(body)``: digest and MAC, compared in constant time. It raises, or
   returns :class:`Verified` -- never a bool that a caller could forget to look at.

:class:`Verified` says which key verified, the replay token, and ``replay_until``: the epoch
second until which a replay of that token must be refused. A scheme computes it from what was
signed (e.g. ``created``), never from the verifying instance's clock, so that every instance
sharing one replay store keeps the token for the same span whatever its own clock says. The
route stores the token with ``ttl = replay_until - now``; schemes add their future window as
the margin for clock skew between instances (see ``rfc9421``).

Adding a scheme (Standard Webhooks, GitHub, Stripe, Slack, ...) is one new module plus one line
in ``registry.py``. The module is pure (no I/O) and declares, for example::

    @dataclass(frozen=True, slots=True)
    class StandardWebhooksSettings:          # the route's config for this scheme, and nothing else
        window_past: int = 300
        window_future: int = 30

    class StandardWebhooksVerifier:          # satisfies Verifier
        def __init__(self, settings: StandardWebhooksSettings) -> None: ...
        def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck: ...

    SCHEME = Scheme("standard-webhooks", StandardWebhooksSettings, StandardWebhooksVerifier)

A scheme that carries no key id tries every active key (``keyring.verifying_keys(now)``); one
whose signature carries no timestamp still returns a ``replay_until`` (e.g. now plus the
span its sender may retry over).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from multidict import MultiMapping

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Keyring


class RequestView(NamedTuple):
    """The parts of a request a signature can cover. ``query`` is None when there is no ``?``.

    (A NamedTuple: one is built for every request, and that is cheaper than a frozen dataclass.)
    Header values are text as aiohttp decodes them: UTF-8 with ``surrogateescape``, so
    ``value.encode("utf-8", "surrogateescape")`` gives back the exact bytes on the wire.
    """

    method: str
    authority: str
    path: str
    query: str | None
    headers: MultiMapping[str]
    scheme: str = "http"


class Verified(NamedTuple):
    """What verified: the key, what the replay store remembers, and until when.

    (A NamedTuple: built on every verified request, and cheaper to build than a frozen dataclass.)
    """

    key_id: str
    replay_token: str  # e.g. the nonce, a message id, or the signature itself
    replay_until: float  # epoch seconds: a replay of the token is refused at least until then
    base_sha256: str = ""  # hash of what was signed, for the log line
    label: str = ""  # which signature verified, where a scheme has several
    covered_fields: frozenset[str] = frozenset()  # header fields signed (lower case): never dropped


class SignatureFailure(VerificationError):
    """A VerificationError that may carry what was signed (for logs and opt-in debug)."""

    def __init__(self, reason: Reason, detail: str, base: bytes | None = None) -> None:
        super().__init__(reason, detail)
        self.signature_base = base
        self.base_sha256 = hashlib.sha256(base).hexdigest() if base is not None else ""


class BodyCheck(Protocol):
    """What is left to check once the headers passed: the checks that need the body."""

    def check_body(self, body: bytes) -> Verified:
        """Digest and MAC. Raises VerificationError (or SignatureFailure) unless one verifies."""
        ...


class Verifier(Protocol):
    """One scheme, configured for one route."""

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck:
        """The checks that need no body. Raises VerificationError unless something may verify."""
        ...


SettingsT = TypeVar("SettingsT")


@dataclass(frozen=True, slots=True)
class Scheme(Generic[SettingsT]):
    """A scheme's name, its per-route settings type, and how to build its verifier from them."""

    name: str
    settings_type: type[SettingsT]
    build: Callable[[SettingsT], Verifier]

    def verifier(self, settings: Any) -> Verifier:
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"scheme {self.name!r} takes {self.settings_type.__name__}, not {type(settings).__name__}")
        return self.build(settings)
