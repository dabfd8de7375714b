"""Slack: ``X-Slack-Signature: v0=<hex HMAC-SHA256>`` over ``v0:<timestamp>:body``, with the
timestamp in ``X-Slack-Request-Timestamp``.

Invariants: the MAC key is the signing secret's bytes (the keyring key's material: store it with
``raw`` encoding, as Slack shows it); the MAC is over the body bytes as received; the replay
token is the signature. Pure: no I/O.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway.keys.model import Keyring
from gateway.signing.scheme import BodyCheck, RequestView, Scheme
from gateway.signing.webhook import (
    PendingMac,
    active_keys,
    check_fresh,
    one_header,
    parse_hex_signature,
    parse_timestamp,
)

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
HEADERS = frozenset({SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()})


@dataclass(frozen=True, slots=True)
class SlackSettings:
    window_past: int = 300
    window_future: int = 30


def mac(secret: bytes, timestamp: int, body: bytes) -> bytes:
    return hmac.digest(secret, b"v0:" + str(timestamp).encode() + b":" + body, "sha256")


def parse_signature(value: str) -> bytes:
    return parse_hex_signature(value, SIGNATURE_HEADER, "v0")


@dataclass(frozen=True, slots=True)
class SlackVerifier:
    settings: SlackSettings

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck:
        timestamp = parse_timestamp(one_header(request, TIMESTAMP_HEADER), TIMESTAMP_HEADER)
        candidate = parse_signature(one_header(request, SIGNATURE_HEADER))
        s = self.settings
        check_fresh(timestamp, now, s.window_past, s.window_future)
        return PendingMac(
            keys=active_keys(keyring, now),
            candidates=(candidate,),
            labels=("v0",),
            mac=lambda key, body: mac(key.material, timestamp, body),
            replay_token="",
            replay_until=timestamp + s.window_past + s.window_future,
        )


SCHEME = Scheme("slack", SlackSettings, SlackVerifier)
