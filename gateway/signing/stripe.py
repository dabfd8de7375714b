"""Stripe: ``Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=...][,v0=...]`` over
``t.body``.

Invariants: the MAC key is the secret string as Stripe hands it out (``whsec_...``, used as its
UTF-8 bytes, not base64-decoded; other secrets: the key's material); the header passes when any
``v1`` value matches any active key (Stripe sends one per endpoint secret during a roll);
``v0`` and unknown schemes are ignored; the replay token is the matching signature. Pure.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Key, Keyring
from gateway.signing.scheme import BodyCheck, RequestView, Scheme
from gateway.signing.webhook import MAX_SIGNATURES, PendingMac, active_keys, check_fresh, one_header, parse_timestamp

SIGNATURE_HEADER = "Stripe-Signature"
HEADERS = frozenset({SIGNATURE_HEADER.lower()})
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class StripeSettings:
    window_past: int = 300
    window_future: int = 30


def mac_key(key: Key) -> bytes:
    return key.secret.encode("utf-8") if key.secret.startswith("whsec_") else key.material


def mac(secret: bytes, timestamp: int, body: bytes) -> bytes:
    return hmac.digest(secret, str(timestamp).encode() + b"." + body, "sha256")


def parse_header(value: str) -> tuple[int, list[bytes]]:
    """(t, the raw v1 MACs). Malformed pairs, a missing or repeated ``t``, no ``v1``: raises."""
    pairs = value.split(",")
    if len(pairs) > MAX_SIGNATURES + 2:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"more than {MAX_SIGNATURES} signatures")
    timestamps: list[str] = []
    v1: list[bytes] = []
    for pair in pairs:
        name, eq, text = pair.partition("=")
        if not eq or not name or not text:
            raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{SIGNATURE_HEADER} must read 't=...,v1=...'")
        if name == "t":
            timestamps.append(text)
        elif name == "v1":
            if len(text) != 64 or not set(text) <= _HEX:
                raise VerificationError(Reason.MALFORMED_SIGNATURE, "a v1 signature must be 64 lower-case hex digits")
            v1.append(bytes.fromhex(text))
    if len(timestamps) != 1:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{SIGNATURE_HEADER} must carry exactly one t=")
    if not v1:
        raise VerificationError(Reason.UNSUPPORTED_ALGORITHM, "no v1 signature (only v1 is supported)")
    return parse_timestamp(timestamps[0], "t"), v1


@dataclass(frozen=True, slots=True)
class StripeVerifier:
    settings: StripeSettings

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck:
        timestamp, candidates = parse_header(one_header(request, SIGNATURE_HEADER))
        s = self.settings
        check_fresh(timestamp, now, s.window_past, s.window_future)
        return PendingMac(
            keys=active_keys(keyring, now),
            candidates=tuple(candidates),
            labels=tuple(f"v1#{i}" for i in range(len(candidates))),
            mac=lambda key, body: mac(mac_key(key), timestamp, body),
            replay_token="",
            replay_until=timestamp + s.window_past + s.window_future,
        )


SCHEME = Scheme("stripe", StripeSettings, StripeVerifier)
