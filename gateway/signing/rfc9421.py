"""RFC 9421 HTTP Message Signatures with ``hmac-sha256``: sign, and verify as a ``scheme.Verifier``.

Pure functions over a ``RequestView``; no I/O. The pipeline mirrors the RFC, each step a
function: ``component_value`` -> ``signature_base`` (both in ``signature_base.py``) ->
``signature_mac`` -> header values.

Verification runs the cheap checks first (structure, parameters, coverage, freshness, key id:
``check_headers``) and only then the digest and the MAC (``check_body``), compared in constant
time. Every failure raises ``VerificationError`` with a stable reason code; nothing here ever
puts key material or an expected MAC into an exception.

The signature headers are RFC 8941 Dictionaries (RFC 9421 cites RFC 8941, not RFC 9651): a
Date or Display String where RFC 9421 wants an Integer or a String (``created=@1``,
``keyid=%"k"``) is malformed, as every other wrongly typed parameter is. Covered fields with
``sf`` or ``key`` are read as RFC 9651 (a superset that serialises RFC 8941 values unchanged).

A verified token must be refused until ``created + window_past + window_future``
(``Verified.replay_until``), not until the verifying instance's ``now + window_past``: an
instance whose clock runs ahead would otherwise store a TTL that ends before a lagging
instance's window closes. ``window_future`` is the margin: instances sharing a replay store
whose clocks differ by up to ``window_future`` seconds all refuse the replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Key, Keyring
from gateway.signing import structured as sf
from gateway.signing import verify_plan
from gateway.signing.digest import verify_content_digest
from gateway.signing.fastpath import FastInput, canonical_b64decode, fast_signature_input, parse_signature
from gateway.signing.scheme import BodyCheck, RequestView, Scheme, SignatureFailure, Verified
from gateway.signing.signature_base import (
    ALGORITHM,
    DEFAULT_COMPONENTS,
    SIGNATURE_PARAMETERS,
    Component,
    ComponentError,
    component_value,
    field_names,
    parse_components,
    signature_base,
    signature_params,
)
from gateway.signing.verify_plan import VerifyPolicy

__all__ = [  # this module's own names, and the pipeline's, under the name callers know
    "ALGORITHM",
    "DEFAULT_COMPONENTS",
    "SCHEME",
    "SIGNATURE_PARAMETERS",
    "Candidate",
    "Component",
    "ComponentError",
    "RequestView",
    "Rfc9421Verifier",
    "SignatureFailure",
    "SignatureHeaders",
    "Verified",
    "VerifyPolicy",
    "canonical_b64decode",
    "check_body",
    "check_headers",
    "component_value",
    "parse_components",
    "sign",
    "signature_base",
    "signature_mac",
    "signature_params",
    "verify",
]


# -- signing --------------------------------------------------------------------------------


def signature_mac(key: Key, base: bytes) -> bytes:
    """The pipeline's last step: HMAC-SHA256 of the signature base (RFC 9421 §3.3.3)."""
    return key.hmac_sha256(base)


@dataclass(frozen=True, slots=True)
class SignatureHeaders:
    signature_input: str
    signature: str


def sign(
    request: RequestView,
    key: Key,
    components: Sequence[Component],
    *,
    created: int,
    nonce: str | None,
    tag: str | None,
    label: str = "sig1",
    include_alg: bool = True,
) -> SignatureHeaders:
    params = signature_params(components, created=created, key_id=key.id, nonce=nonce, tag=tag, include_alg=include_alg)
    mac = signature_mac(key, signature_base(request, components, params))
    return SignatureHeaders(
        signature_input=f"{label}={params}", signature=f"{label}=:{base64.b64encode(mac).decode()}:"
    )


# -- verification ---------------------------------------------------------------------------


class Candidate(NamedTuple):
    """A signature that passed every check that needs no body: what is left is digest and MAC."""

    label: str
    components: tuple[Component, ...]
    params: sf.Params
    params_text: str  # the serialised inner list: the "@signature-params" value
    provided: bytes
    keys: tuple[Key, ...]
    replay_until: int  # created + window_past + window_future
    nonce: str | None
    fields: frozenset[str]  # the covered header fields


class _Pending(NamedTuple):
    request: RequestView
    candidates: list[Candidate]

    def check_body(self, body: bytes) -> Verified:
        return check_body(self.request, body, self.candidates)


class _Planned(NamedTuple):
    """Headers accepted on the route's compiled plan; the body is checked on it too, and
    anything the plan does not accept as sent is decided by the general path."""

    request: RequestView
    accepted: verify_plan.Accepted
    keyring: Keyring
    policy: VerifyPolicy
    now: float

    def check_body(self, body: bytes) -> Verified:
        verified = verify_plan.check_body(self.request, body, self.accepted)
        if verified is not None:
            return verified
        return check_body(self.request, body, check_headers(self.request, self.keyring, self.policy, self.now))


class Rfc9421Verifier:
    """RFC 9421 (``hmac-sha256``) as a ``scheme.Verifier``, configured by one ``VerifyPolicy``:
    the route's compiled plan first (``verify_plan``), the general path for anything else."""

    __slots__ = ("planner", "policy")

    def __init__(self, policy: VerifyPolicy) -> None:
        self.policy = policy
        self.planner = verify_plan.Planner(policy)

    def check_headers(self, request: RequestView, keyring: Keyring, now: float) -> BodyCheck:
        accepted = self.planner.check_headers(request, keyring, now)
        if accepted is not None:
            return _Planned(request, accepted, keyring, self.policy, now)
        return _Pending(request, check_headers(request, keyring, self.policy, now))


SCHEME = Scheme("rfc9421", VerifyPolicy, Rfc9421Verifier)


def verify(request: RequestView, body: bytes, keyring: Keyring, policy: VerifyPolicy, now: float) -> Verified:
    """Verify the request's signatures: ``check_headers`` then ``check_body``."""
    return check_body(request, body, check_headers(request, keyring, policy, now))


def check_headers(request: RequestView, keyring: Keyring, policy: VerifyPolicy, now: float) -> list[Candidate]:
    """The cheap checks, before a byte of the body is read: structure, parameters, coverage,
    freshness, key id. Returns the signatures still in the running; raises if none is."""
    inputs_lines = request.headers.getall("signature-input", [])
    signature_lines = request.headers.getall("signature", [])
    if not inputs_lines or not signature_lines:
        missing = "Signature-Input" if not inputs_lines else "Signature"
        raise VerificationError(Reason.MISSING_SIGNATURE, f"{missing} header is missing")
    inputs_text, signatures_text = ", ".join(inputs_lines), ", ".join(signature_lines)
    if len(inputs_text) > sf.MAX_LENGTH or len(signatures_text) > sf.MAX_LENGTH:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"signature headers longer than {sf.MAX_LENGTH}")
    try:
        inputs: Mapping[str, sf.Member | FastInput] = fast_signature_input(inputs_text) or sf.parse_dictionary(
            inputs_text
        )
        signatures = parse_signature(signatures_text)
    except sf.StructuredFieldError as exc:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"signature headers: {exc}") from None
    if len(inputs) > policy.max_signatures:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"more than {policy.max_signatures} signatures")
    labels = [label for label in inputs if label in signatures]
    if not labels:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, "no label appears in both Signature-Input and Signature")
    if policy.expected_tag is not None:
        labels = [lb for lb in labels if inputs[lb].params.get("tag") == policy.expected_tag]
        if not labels:
            raise VerificationError(Reason.TAG_MISMATCH, f"no signature carries tag {policy.expected_tag!r}")
    candidates: list[Candidate] = []
    first_error: VerificationError | None = None
    for label in labels:
        try:
            candidates.append(_check_one(keyring, policy, now, label, inputs[label], signatures[label]))
        except VerificationError as exc:
            exc.key_id = exc.key_id or _claimed_key_id(inputs[label].params)
            first_error = first_error or exc
    if not candidates:
        assert first_error is not None
        raise first_error
    return candidates


def check_body(request: RequestView, body: bytes, candidates: Sequence[Candidate]) -> Verified:
    """Digest and MAC for each candidate; the first that verifies wins."""
    first_error: VerificationError | None = None
    for candidate in candidates:
        try:
            return _check_digest_and_mac(request, body, candidate)
        except VerificationError as exc:
            exc.key_id = exc.key_id or _claimed_key_id(candidate.params)
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def _claimed_key_id(params: sf.Params) -> str:
    """The sender's keyid parameter, for logs (sf-strings are printable ASCII already)."""
    key_id = params.get("keyid")
    return key_id[:128] if type(key_id) is str else ""


def _covered(label: str, member: sf.Member | FastInput) -> tuple[tuple[Component, ...], str, frozenset[str]]:
    """The components, the "@signature-params" text and the field names of one Signature-Input member."""
    if isinstance(member, FastInput):
        return member.components, member.serialized, member.fields
    if not isinstance(member, sf.InnerList):
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"Signature-Input {label!r} must be an inner list")
    try:
        components = tuple(Component.from_item(item) for item in member.items)
        return components, sf.serialize_inner_list(member), field_names(components)
    except (ComponentError, sf.StructuredFieldError) as exc:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, str(exc)) from None


def _check_params(params: sf.Params, policy: VerifyPolicy) -> None:
    malformed = Reason.MALFORMED_SIGNATURE
    for name, value in params.items():
        if name not in SIGNATURE_PARAMETERS:
            raise VerificationError(malformed, f"unknown signature parameter {name!r}")
        wants_int = name in ("created", "expires")
        # type() is, not isinstance: a bool is not an Integer, nor a Token or Display String a String
        if (type(value) is not int) if wants_int else (type(value) is not str):
            kind = "an integer" if wants_int else "a string"
            raise VerificationError(malformed, f"signature parameter {name!r} must be {kind}")
    alg = params.get("alg")
    if alg is not None and alg != ALGORITHM:
        raise VerificationError(Reason.UNSUPPORTED_ALGORITHM, f"alg {alg!r} is not {ALGORITHM!r}")
    for name, required in (("alg", policy.require_alg), ("nonce", policy.require_nonce), ("created", True)):
        if required and name not in params:
            raise VerificationError(Reason.MISSING_PARAMETER, f"signature parameter {name!r} is required")


def _check_one(
    keyring: Keyring,
    policy: VerifyPolicy,
    now: float,
    label: str,
    member: sf.Member | FastInput,
    signature_member: sf.Member,
) -> Candidate:
    if not isinstance(signature_member, sf.Item) or type(signature_member.value) is not bytes:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"Signature {label!r} must be a byte sequence")
    components, params_text, fields = _covered(label, member)
    covered = {c.identifier for c in components}
    if len(covered) != len(components):
        raise VerificationError(Reason.MALFORMED_SIGNATURE, "a component is covered twice")
    params = member.params
    _check_params(params, policy)
    missing = sorted(policy.required - covered)
    if missing:
        raise VerificationError(Reason.INSUFFICIENT_COVERAGE, f"signature must cover {' '.join(missing)}")

    created = params["created"]
    assert type(created) is int
    if now - created > policy.window_past:
        raise VerificationError(Reason.STALE, f"created more than {policy.window_past}s ago")
    if created - now > policy.window_future:
        raise VerificationError(Reason.FUTURE, f"created more than {policy.window_future}s in the future")
    expires = params.get("expires")
    if type(expires) is int and now >= expires:
        raise VerificationError(Reason.STALE, "signature has expired")

    key_id = params.get("keyid")
    keys = (keyring.verifying_key(key_id, now),) if type(key_id) is str else tuple(keyring.verifying_keys(now))
    if not keys:
        raise VerificationError(Reason.UNKNOWN_KEY, "the keyring has no active key")
    nonce = params.get("nonce")
    return Candidate(
        label=label,
        components=components,
        params=params,
        params_text=params_text,
        provided=signature_member.value,
        keys=keys,
        replay_until=created + policy.window_past + policy.window_future,
        nonce=nonce if type(nonce) is str else None,
        fields=fields,
    )


def _check_digest_and_mac(request: RequestView, body: bytes, candidate: Candidate) -> Verified:
    if any(c.identifier == '"content-digest"' for c in candidate.components):
        digest_lines = request.headers.getall("content-digest", [])
        if not digest_lines:
            raise VerificationError(Reason.MISSING_DIGEST, "Content-Digest is covered but absent")
        verify_content_digest(", ".join(digest_lines), body)
    try:
        base = signature_base(request, candidate.components, candidate.params_text)
    except ComponentError as exc:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, str(exc)) from None
    provided = candidate.provided
    for key in candidate.keys:
        if hmac.compare_digest(signature_mac(key, base), provided):
            token = candidate.nonce if candidate.nonce is not None else base64.b64encode(provided).decode()
            return Verified(
                key_id=key.id,
                replay_token=token,
                replay_until=candidate.replay_until,
                base_sha256=hashlib.sha256(base).hexdigest(),
                label=candidate.label,
                covered_fields=candidate.fields,
            )
    raise SignatureFailure(Reason.SIGNATURE_MISMATCH, "signature does not verify", base)
