"""RFC 9530 Content-Digest over the exact body bytes.

We emit ``sha-256``; we verify ``sha-256`` and ``sha-512`` (every supported entry present
must match; unsupported algorithms are ignored; at least one supported entry is required).
Comparisons are constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable

from gateway.errors import Reason, VerificationError
from gateway.signing import structured as sf

_ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The Content-Digest field value for ``body``."""
    if not body and algorithm == "sha-256":
        return _EMPTY_SHA256  # most requests through a sign route are bodyless
    digest = _ALGORITHMS[algorithm](body).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def _canonical(text: str) -> bool:
    """Base64 in canonical form only (exact padding): anything else takes the full parser."""
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode() == text
    except ValueError:
        return False


_EMPTY_SHA256 = f"sha-256=:{base64.b64encode(hashlib.sha256(b'').digest()).decode()}:"
_FAST = re.compile(r"(sha-256|sha-512)=:([A-Za-z0-9+/]+=?=?):")


def verify_content_digest(field_value: str, body: bytes) -> None:
    """Raise VerificationError unless ``field_value`` matches ``body``."""
    fast = _FAST.fullmatch(field_value)  # the common case: one canonical entry
    if fast is not None:
        expected = base64.b64decode(fast[2], validate=True) if _canonical(fast[2]) else None
        if expected is not None:
            if not hmac.compare_digest(expected, _ALGORITHMS[fast[1]](body).digest()):
                raise VerificationError(Reason.DIGEST_MISMATCH, f"body does not match its {fast[1]} digest")
            return
    try:
        members = sf.parse_dictionary(field_value)
    except sf.StructuredFieldError:
        raise VerificationError(Reason.MALFORMED_DIGEST, "Content-Digest is not a structured dictionary") from None
    checked = 0
    for algorithm, member in members.items():
        hash_fn = _ALGORITHMS.get(algorithm)
        if hash_fn is None:
            continue
        if not isinstance(member, sf.Item) or type(member.value) is not bytes:
            raise VerificationError(Reason.MALFORMED_DIGEST, f"{algorithm} value must be a byte sequence")
        if not hmac.compare_digest(member.value, hash_fn(body).digest()):
            raise VerificationError(Reason.DIGEST_MISMATCH, f"body does not match its {algorithm} digest")
        checked += 1
    if not checked:
        raise VerificationError(
            Reason.MALFORMED_DIGEST, f"no supported digest algorithm (supported: {', '.join(_ALGORITHMS)})"
        )
