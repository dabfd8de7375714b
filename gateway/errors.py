"""Exceptions and the problem+json vocabulary.

Every failure the gateway reports to a client carries a stable reason code; every failure
the CLI reports maps to one exit code (see ``gateway.exitcodes``). No exception defined here
ever carries key material: messages name key ids, files and settings, never secrets.

::

    GatewayError
     ├── ConfigError            configuration invalid (every problem listed)      -> exit 2
     ├── ReplayStoreError       the replay store failed its start-up check        -> exit 5
 ├── KeyringError           a keyring cannot be read or understood            -> exit 3
     │    ├── KeyringFormatError   the document is not a valid keyring
     │    ├── SourceError          the source could not be read or written
     │    │    └── WriteConflict   a compare-and-swap write lost: the stored version moved
     │    └── SealError            a sealed file: missing/wrong master key, corrupt
     ├── RotationError          ``rotate`` could not carry out a step it was allowed to take
     │    ├── RotationConflict     every compare-and-swap attempt lost to another writer  -> exit 8
     │    └── SourceUnavailable    the keyring's source could not be read or written      -> exit 9
     └── RequestRejected        a request answered with a problem+json reason
          └── VerificationError    a signature check failed (401)
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``problems`` lists every one found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ReplayStoreError(GatewayError):
    """The replay store cannot do its job (unreachable, or it could evict live entries).
    The message never carries the store's URL or password."""


class KeyringError(GatewayError):
    """A keyring cannot be loaded."""


class KeyringFormatError(KeyringError):
    """The keyring document is malformed (never quotes the secret)."""


class SourceError(KeyringError):
    """The keyring source could not be read or written."""


class WriteConflict(SourceError):
    """The stored document is no longer the version a write expected: re-read and re-plan."""


class SealError(KeyringError):
    """A sealed keyring file cannot be opened."""


class RotationError(GatewayError):
    """A rotation step the lifecycle allowed could not be carried out (the keyring is unchanged or
    its outcome is said). A step the lifecycle refuses is ``gateway.rotation.RotationRefused``."""


class RotationConflict(RotationError):
    """Other writers won every compare-and-swap attempt; run again (nothing was lost)."""


class SourceUnavailable(RotationError):
    """The keyring source could not be read or written during a rotation."""


@dataclass(frozen=True, slots=True)
class _ReasonInfo:
    status: int
    title: str


class Reason(enum.Enum):
    """Stable reason codes. The value is what clients and logs see; never rename one."""

    # verification (401)
    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    MISSING_PARAMETER = "missing_parameter"
    TAG_MISMATCH = "tag_mismatch"
    INSUFFICIENT_COVERAGE = "insufficient_coverage"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED_KEY = "expired_key"
    STALE = "stale"
    FUTURE = "future"
    REPLAYED = "replayed"
    MISSING_DIGEST = "missing_digest"
    MALFORMED_DIGEST = "malformed_digest"
    DIGEST_MISMATCH = "digest_mismatch"
    SIGNATURE_MISMATCH = "signature_mismatch"
    # request shape
    CLIENT_TOKEN_REQUIRED = "client_token_required"  # noqa: S105 - a reason code, not a secret
    BAD_REQUEST = "bad_request"
    ABSOLUTE_FORM_TARGET = "absolute_form_target"
    NON_CANONICAL_PATH = "non_canonical_path"
    MISDIRECTED = "misdirected"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    FORBIDDEN = "forbidden"
    NO_ROUTE = "no_route"
    BODY_TOO_LARGE = "body_too_large"
    EXPECTATION_FAILED = "expectation_failed"
    CLIENT_ABORTED = "client_aborted"  # the client went away mid-request: logged, nothing to answer
    CLIENT_STALLED = "client_stalled"  # the client stopped reading an answer: dropped, logged
    # our side
    KEYRING_UNAVAILABLE = "keyring_unavailable"
    REPLAY_STORE_FULL = "replay_store_full"
    REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> int:
        return _REASONS[self].status

    @property
    def title(self) -> str:
        return _REASONS[self].title


_REASONS: dict[Reason, _ReasonInfo] = {
    Reason.MISSING_SIGNATURE: _ReasonInfo(401, "Signature or Signature-Input header missing"),
    Reason.MALFORMED_SIGNATURE: _ReasonInfo(401, "Signature headers are malformed"),
    Reason.UNSUPPORTED_ALGORITHM: _ReasonInfo(401, "Signature algorithm is not supported"),
    Reason.MISSING_PARAMETER: _ReasonInfo(401, "A signature parameter this route requires is missing"),
    Reason.TAG_MISMATCH: _ReasonInfo(401, "Signature tag does not match this route"),
    Reason.INSUFFICIENT_COVERAGE: _ReasonInfo(401, "Signature does not cover the required components"),
    Reason.UNKNOWN_KEY: _ReasonInfo(401, "Key id is not known"),
    Reason.EXPIRED_KEY: _ReasonInfo(401, "Key has expired"),
    Reason.STALE: _ReasonInfo(401, "Signature is too old"),
    Reason.FUTURE: _ReasonInfo(401, "Signature is created in the future"),
    Reason.REPLAYED: _ReasonInfo(401, "Signature was already used"),
    Reason.MISSING_DIGEST: _ReasonInfo(401, "Content-Digest header missing"),
    Reason.MALFORMED_DIGEST: _ReasonInfo(401, "Content-Digest header is malformed or uses no supported algorithm"),
    Reason.DIGEST_MISMATCH: _ReasonInfo(401, "Body does not match Content-Digest"),
    Reason.SIGNATURE_MISMATCH: _ReasonInfo(401, "Signature does not verify"),
    Reason.CLIENT_TOKEN_REQUIRED: _ReasonInfo(401, "This listener requires a valid X-Gateway-Token"),
    Reason.BAD_REQUEST: _ReasonInfo(400, "Request is malformed"),
    Reason.ABSOLUTE_FORM_TARGET: _ReasonInfo(400, "Absolute-form request targets are refused (not a forward proxy)"),
    Reason.NON_CANONICAL_PATH: _ReasonInfo(
        400, "Path has dot segments, empty segments, encoded slashes or needless percent-encoding"
    ),
    Reason.METHOD_NOT_ALLOWED: _ReasonInfo(405, "Method not allowed"),
    Reason.FORBIDDEN: _ReasonInfo(403, "Only operators' networks may read this"),
    Reason.MISDIRECTED: _ReasonInfo(421, "This route does not serve that authority"),
    Reason.NO_ROUTE: _ReasonInfo(404, "No route for this path"),
    Reason.BODY_TOO_LARGE: _ReasonInfo(413, "Request body exceeds the route's limit"),
    Reason.EXPECTATION_FAILED: _ReasonInfo(417, "Only 'Expect: 100-continue' is supported"),
    Reason.CLIENT_ABORTED: _ReasonInfo(400, "The client closed the connection before the request was complete"),
    Reason.CLIENT_STALLED: _ReasonInfo(408, "The client stopped reading the answer"),
    Reason.KEYRING_UNAVAILABLE: _ReasonInfo(503, "Keyring not loaded"),
    Reason.REPLAY_STORE_FULL: _ReasonInfo(503, "Replay store is full"),
    Reason.REPLAY_STORE_UNAVAILABLE: _ReasonInfo(503, "Replay store unavailable"),
    Reason.UPSTREAM_UNAVAILABLE: _ReasonInfo(502, "Upstream unavailable"),
    Reason.UPSTREAM_TIMEOUT: _ReasonInfo(504, "Upstream timed out"),
    Reason.INTERNAL_ERROR: _ReasonInfo(500, "Internal error"),
}


class RequestRejected(GatewayError):
    """A request is answered with ``reason``; ``detail`` is safe to show the client."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class VerificationError(RequestRejected):
    """A signature failed verification. ``key_id`` is the sender's claimed key id, for logs."""

    def __init__(self, reason: Reason, detail: str = "", key_id: str = "") -> None:
        super().__init__(reason, detail)
        self.key_id = key_id


PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(reason: Reason, detail: str = "", request_id: str = "", **extra: object) -> bytes:
    """RFC 9457 body. ``extra`` must never carry keys, MACs or internal configuration."""
    doc: dict[str, object] = {
        "type": f"urn:hmac-gateway:reason:{reason.value}",
        "title": reason.title,
        "status": reason.status,
        "reason": reason.value,
    }
    if detail:
        doc["detail"] = detail
    if request_id:
        doc["request_id"] = request_id
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":")).encode()
