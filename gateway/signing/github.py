"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.

GitHub signs no timestamp, so this scheme has no freshness window: a captured delivery verifies
for as long as the key is active. What stands between it and a replay is the replay store, keyed
by ``X-GitHub-Delivery`` (else the signature), for ``replay_window`` seconds after first use --
weaker than the timestamped schemes; ``require_delivery_id`` refuses deliveries without the id.

Invariants: the MAC key is the webhook secret's bytes (the keyring key's material, ``raw``
encoding); the MAC is over the body bytes as received. Pure: no I/O.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Keyring
from gateway.signing.scheme import BodyCheck, RequestView, Scheme
from gateway.signing.webhook import PendingMac, active_keys, one_header, parse_hex_signature

SIGNATURE_HEADER = "X-Hub-Signature-256"
DELIVERY_HEADER = "X-GitHub-Delivery"
HEADERS = frozenset({SIGNATURE_HEADER.lower(), "x-hub-signature"})
_MAX_ID = 128


@dataclass(frozen=True, slots=True)
class GitHubSettings:
    require_delivery_id: bool = False
    replay_window: int = 86400


def mac(secret: bytes, body: bytes) -> bytes:
    return hmac.digest(secret, body, "sha256")


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + mac(secret, body).hex()


def parse_signature(value: str) -> bytes:
    return parse_hex_signature(value, SIGNATURE_HEADER, "sha256")


@dataclass(frozen=True, slots=True)
class GitHubVerifier:
    settings: GitHubSettings

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck:
        candidate = parse_signature(one_header(request, SIGNATURE_HEADER))
        delivery = ""
        if DELIVERY_HEADER in request.headers or self.settings.require_delivery_id:
            delivery = one_header(request, DELIVERY_HEADER, missing=Reason.MISSING_PARAMETER)
            if not 0 < len(delivery) <= _MAX_ID or not all(0x21 <= ord(c) <= 0x7E for c in delivery):
                raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{DELIVERY_HEADER} must be printable, ≤ {_MAX_ID}")
        return PendingMac(
            keys=active_keys(keyring, now),
            candidates=(candidate,),
            labels=("sha256",),
            mac=lambda key, body: mac(key.material, body),
            replay_token=f"delivery:{delivery}" if delivery else "",
            replay_until=now + self.settings.replay_window,
        )


SCHEME = Scheme("github", GitHubSettings, GitHubVerifier)
