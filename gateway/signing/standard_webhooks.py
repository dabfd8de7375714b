"""Standard Webhooks (the Svix scheme): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256> [v1,<...> ...]`` over ``id.timestamp.body``.

Invariants: the MAC is over the body bytes as received; the key is the keyring key's material
(a ``whsec_`` secret is base64, as the Standard Webhooks libraries read it); a header holding
several signatures passes when any ``v1`` one matches any active key; entries of other versions
are ignored, as the specification says; the replay token is the message id. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Key, Keyring
from gateway.signing.scheme import BodyCheck, RequestView, Scheme
from gateway.signing.webhook import (
    MAX_SIGNATURES,
    PendingMac,
    active_keys,
    check_fresh,
    one_header,
    parse_timestamp,
    wire,
)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
HEADERS = frozenset({ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER})
_MAX_ID = 256


@dataclass(frozen=True, slots=True)
class StandardWebhooksSettings:
    window_past: int = 300
    window_future: int = 30


def mac(material: bytes, msg_id: bytes, timestamp: int, body: bytes) -> bytes:
    """The raw HMAC-SHA256 of ``id.timestamp.body``."""
    return hmac.digest(material, msg_id + b"." + str(timestamp).encode() + b"." + body, "sha256")


def signature(material: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``webhook-signature`` entry: ``v1,<base64>``."""
    return "v1," + base64.b64encode(mac(material, wire(msg_id), timestamp, body)).decode()


def sign_headers(keys: list[Key], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers for a message signed with each of ``keys`` (one entry per key)."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(signature(k.material, msg_id, timestamp, body) for k in keys),
    }


def parse_signatures(value: str) -> list[bytes]:
    """The raw MACs of the ``v1`` entries; anything malformed raises, other versions are skipped."""
    entries = value.split(" ")
    if len(entries) > MAX_SIGNATURES:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"more than {MAX_SIGNATURES} signatures")
    out = []
    for entry in entries:
        version, comma, encoded = entry.partition(",")
        if not comma or not version or not encoded:
            raise VerificationError(Reason.MALFORMED_SIGNATURE, "each signature must read 'v1,<base64>'")
        if version != "v1":
            continue
        try:
            out.append(base64.b64decode(encoded.encode("ascii"), validate=True))
        except (ValueError, binascii.Error):
            raise VerificationError(Reason.MALFORMED_SIGNATURE, "a v1 signature is not base64") from None
    if not out:
        raise VerificationError(Reason.UNSUPPORTED_ALGORITHM, "no v1 signature (only v1 is supported)")
    return out


@dataclass(frozen=True, slots=True)
class StandardWebhooksVerifier:
    settings: StandardWebhooksSettings

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck:
        msg_id = one_header(request, ID_HEADER)
        if not 0 < len(msg_id) <= _MAX_ID or not all(0x21 <= ord(c) <= 0x7E for c in msg_id):
            raise VerificationError(Reason.MALFORMED_SIGNATURE, f"{ID_HEADER} must be 1-{_MAX_ID} printable characters")
        timestamp = parse_timestamp(one_header(request, TIMESTAMP_HEADER), TIMESTAMP_HEADER)
        candidates = parse_signatures(one_header(request, SIGNATURE_HEADER))
        s = self.settings
        check_fresh(timestamp, now, s.window_past, s.window_future)
        id_bytes = msg_id.encode("ascii")
        return PendingMac(
            keys=active_keys(keyring, now),
            candidates=tuple(candidates),
            labels=tuple(f"v1#{i}" for i in range(len(candidates))),
            mac=lambda key, body: mac(key.material, id_bytes, timestamp, body),
            replay_token=msg_id,
            replay_until=timestamp + s.window_past + s.window_future,
        )


SCHEME = Scheme("standard-webhooks", StandardWebhooksSettings, StandardWebhooksVerifier)
