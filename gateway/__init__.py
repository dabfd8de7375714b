"""hmac-gateway: an HMAC signing and verifying reverse proxy (RFC 9421) with rotating keyrings.

The public surface is listed in ``__all__``; everything else is internal.
"""

from __future__ import annotations

from gateway.errors import (
    ConfigError,
    GatewayError,
    KeyringError,
    KeyringFormatError,
    Reason,
    RequestRejected,
    SealError,
    SourceError,
    VerificationError,
)
from gateway.keys.formats import dump_lifecycle, parse_keyring
from gateway.keys.model import Key, Keyring, KeyState
from gateway.signing.digest import content_digest, verify_content_digest
from gateway.signing.registry import SCHEMES, verifier_for
from gateway.signing.rfc9421 import VerifyPolicy, sign, verify
from gateway.signing.scheme import BodyCheck, RequestView, Scheme, SignatureFailure, Verified, Verifier
from gateway.signing.signature_base import Component, signature_base

__version__ = "0.1.0"

__all__ = [
    "SCHEMES",
    "BodyCheck",
    "Component",
    "ConfigError",
    "GatewayError",
    "Key",
    "KeyState",
    "Keyring",
    "KeyringError",
    "KeyringFormatError",
    "Reason",
    "RequestRejected",
    "RequestView",
    "Scheme",
    "SealError",
    "SignatureFailure",
    "SourceError",
    "VerificationError",
    "Verified",
    "Verifier",
    "VerifyPolicy",
    "__version__",
    "content_digest",
    "dump_lifecycle",
    "parse_keyring",
    "sign",
    "signature_base",
    "verifier_for",
    "verify",
    "verify_content_digest",
]
