"""What the webhook schemes (Standard Webhooks, GitHub, Stripe, Slack) share: reading their
headers, timestamps and freshness, and trying a MAC against every active key.

Invariants: none of these schemes carries a key id, so a MAC is tried against every key that
verifies at ``now``, and every comparison is constant-time (``hmac.compare_digest``) against
every candidate signature -- no early exit tells a sender which one came close. Malformed
input raises :class:`~gateway.errors.VerificationError` with a reason code, never anything
else. Pure: no I/O.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Key, Keyring
from gateway.signing.scheme import RequestView, Verified

MAX_HEADER = 4096  # longer signature headers are refused before they are parsed
MAX_SIGNATURES = 16  # candidates per header: bounds the MACs one request can cost
_TIMESTAMP_DIGITS = 12  # a Unix timestamp in seconds until the year 33658: larger is malformed


def wire(value: str) -> bytes:
    """A header value's bytes as received (aiohttp decodes them with surrogateescape)."""
    return value.encode("utf-8", "surrogateescape")


def one_header(request: RequestView, name: str, *, missing: Reason = Reason.MISSING_SIGNATURE) -> str:
    """The single value of ``name``: absent -> ``missing``; repeated or oversized -> malformed."""
    values = request.headers.getall(name, [])
    if not values:
        raise VerificationError(missing, f"{name} header missing")
    if len(values) > 1:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{name} appears more than once")
    value: str = values[0]
    if len(value) > MAX_HEADER:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{name} is longer than {MAX_HEADER} characters")
    return value


_HEX = frozenset("0123456789abcdef")


def parse_hex_signature(value: str, header: str, version: str) -> bytes:
    """``<version>=<64 lower-case hex digits>`` (GitHub's ``sha256=``, Slack's ``v0=``) -> the MAC."""
    found, eq, text = value.partition("=")
    if not eq:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{header} must read '{version}=<hex>'")
    if found != version:
        raise VerificationError(Reason.UNSUPPORTED_ALGORITHM, f"only {version} signatures are supported")
    if len(text) != 64 or not set(text) <= _HEX:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, "the signature must be 64 lower-case hex digits")
    return bytes.fromhex(text)


def parse_timestamp(text: str, name: str) -> int:
    """Unix seconds as ASCII digits only (no sign, space, fraction or exponent)."""
    if not text or len(text) > _TIMESTAMP_DIGITS or not (text.isascii() and text.isdigit()):
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{name} must be Unix seconds (digits only)")
    return int(text)


def check_fresh(timestamp: int, now: float, window_past: int, window_future: int) -> None:
    if timestamp < now - window_past:
        raise VerificationError(Reason.STALE, f"signed more than {window_past} s ago")
    if timestamp > now + window_future:
        raise VerificationError(Reason.FUTURE, f"signed more than {window_future} s ahead of this gateway's clock")


def active_keys(keyring: Keyring, now: float) -> tuple[Key, ...]:
    keys = tuple(keyring.verifying_keys(now))
    if not keys:
        raise VerificationError(Reason.UNKNOWN_KEY, "no key of this route's keyring verifies now")
    return keys


def first_match(
    keys: Sequence[Key], candidates: Sequence[bytes], mac: Callable[[Key], bytes]
) -> tuple[Key, int] | None:
    """The first key (in keyring order) whose MAC equals one of ``candidates``, and that candidate's
    index. Every key and every candidate is compared, so timing tells nothing about which matched."""
    found: tuple[Key, int] | None = None
    for key in keys:
        expected = mac(key)
        for index, candidate in enumerate(candidates):
            if hmac.compare_digest(expected, candidate) and found is None:
                found = (key, index)
    return found


@dataclass(frozen=True, slots=True)
class PendingMac:
    """The body check of a webhook scheme: MAC ``prefix + body`` with each key, compare, verify."""

    keys: tuple[Key, ...]
    candidates: tuple[bytes, ...]
    labels: tuple[str, ...]  # one per candidate, e.g. "v1#0"
    mac: Callable[[Key, bytes], bytes]  # (key, body) -> the raw MAC (candidates are decoded to raw bytes)
    replay_token: str  # "" means: the matched signature itself
    replay_until: float

    def check_body(self, body: bytes) -> Verified:
        match = first_match(self.keys, self.candidates, lambda key: self.mac(key, body))
        if match is None:
            raise VerificationError(Reason.SIGNATURE_MISMATCH, "no signature verifies with an active key")
        key, index = match
        token = self.replay_token or self.candidates[index].hex()
        return Verified(key.id, token, self.replay_until, label=self.labels[index])
