"""RFC 9421 HTTP Message Signatures with ``hmac-sha256``: components, signature base, sign, verify.

Pure functions over a ``RequestView``; no I/O. The pipeline mirrors the RFC:
covered components -> component values -> signature base (RFC 9421 §2.5: one
``"name": value`` line per component in ``Signature-Input`` order, lower-case names,
LF-joined, ``"@signature-params"`` last, no trailing LF) -> HMAC -> header values.

Verification runs the cheap checks first (structure, parameters, coverage, freshness,
key id) and only then the digest and the MAC, which are compared in constant time.
Every failure raises ``VerificationError`` with a stable reason code; nothing here ever
puts key material or an expected MAC into an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, unquote_plus

from multidict import MultiMapping

from gateway.errors import Reason, VerificationError
from gateway.http_vocab import HOP_BY_HOP
from gateway.keys.model import Key, Keyring
from gateway.signing import sfv
from gateway.signing.digest import verify_content_digest

ALGORITHM = "hmac-sha256"
SIGNATURE_PARAMETERS = frozenset({"created", "expires", "nonce", "alg", "keyid", "tag"})
DERIVED_COMPONENTS = frozenset(
    {"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query", "@query-param"}
)
DEFAULT_COMPONENTS = ("@method", "@authority", "@path", "@query", "content-digest")
# Structured field types for the ``sf`` and ``key`` component parameters.
_DICTIONARY_FIELDS = frozenset(
    {"content-digest", "repr-digest", "want-content-digest", "signature", "signature-input", "priority"}
)
_LIST_FIELDS = frozenset({"accept-ch", "cache-status", "proxy-status"})


class ComponentError(ValueError):
    """A covered component cannot be resolved (message is safe to show a client)."""


@dataclass(frozen=True, slots=True)
class RequestView:
    """The parts of a request a signature can cover. ``query`` is None when there is no ``?``."""

    method: str
    authority: str
    path: str
    query: str | None
    headers: MultiMapping[str]
    scheme: str = "http"


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    params: sfv.Params
    identifier: str  # the serialised component identifier, as it appears in the base

    @classmethod
    def from_item(cls, item: sfv.Item) -> Component:
        value = item.value
        if not item.params and type(value) is str:
            cached = _PLAIN_COMPONENTS.get(value)
            if cached is not None:
                return cached
        component = cls._from_item(item)
        if not item.params and len(_PLAIN_COMPONENTS) < _PLAIN_COMPONENTS_MAX:
            _PLAIN_COMPONENTS[component.name] = component
        return component

    @classmethod
    def _from_item(cls, item: sfv.Item) -> Component:
        value = item.value
        if type(value) is not str:
            raise ComponentError("component identifiers must be structured-field strings")
        if value != value.lower():
            raise ComponentError(f"component name {value!r} is not lower case")
        if value.startswith("@"):
            if value not in DERIVED_COMPONENTS:
                raise ComponentError(f"unsupported derived component {value!r}")
            if value == "@query-param":
                if set(item.params) != {"name"} or type(item.params["name"]) is not str:
                    raise ComponentError('"@query-param" needs exactly one string parameter "name"')
            elif item.params:
                raise ComponentError(f"derived component {value!r} takes no parameters here")
        else:
            _check_field_params(value, item.params)
        return cls(name=value, params=dict(item.params), identifier=sfv.serialize_item(item))

    @classmethod
    def parse(cls, text: str) -> Component:
        """From config: a bare name (``content-type``) or a serialised item (``"@query-param";name="a"``)."""
        try:
            item = sfv.parse_item(text) if text.startswith('"') else sfv.Item(text, {})
        except sfv.SFVError as exc:
            raise ComponentError(f"{text!r} is not a component identifier: {exc}") from None
        return cls.from_item(item)


# Plain components ("@method", "content-digest") recur on every request: build each once.
# Bounded, so a sender cycling through made-up field names cannot grow it without limit.
_PLAIN_COMPONENTS: dict[str, Component] = {}
_PLAIN_COMPONENTS_MAX = 512


def _check_field_params(name: str, params: sfv.Params) -> None:
    for param, value in params.items():
        if param in ("sf", "bs"):
            if value is not True:
                raise ComponentError(f'"{name}": parameter {param!r} must be a boolean true')
        elif param == "key":
            if type(value) is not str:
                raise ComponentError(f'"{name}": parameter "key" must be a string')
        else:
            # req (responses) and tr (trailers) do not apply to a request we proxy.
            raise ComponentError(f'"{name}": unsupported component parameter {param!r}')
    if "bs" in params and ("sf" in params or "key" in params):
        raise ComponentError(f'"{name}": "bs" cannot be combined with "sf" or "key"')
    if name in HOP_BY_HOP:
        raise ComponentError(f'"{name}" is a hop-by-hop field and cannot be covered')


def parse_components(names: Iterable[str]) -> tuple[Component, ...]:
    components = tuple(Component.parse(n) for n in names)
    identifiers = [c.identifier for c in components]
    if len(set(identifiers)) != len(identifiers):
        raise ComponentError("a component is listed twice")
    return components


# -- component values ---------------------------------------------------------------------


def _authority(request: RequestView) -> str:
    authority = request.authority.lower()
    default = ":443" if request.scheme == "https" else ":80"
    return authority[: -len(default)] if authority.endswith(default) else authority


def _form_encode(text: str) -> str:
    # WHATWG application/x-www-form-urlencoded percent-encode set, space as %20 (RFC 9421 §2.2.8).
    return quote(text, safe="*").replace("~", "%7E")


def _query_param(request: RequestView, name: object) -> str:
    values = []
    for pair in (request.query or "").split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        if _form_encode(unquote_plus(raw_name)) == name:
            values.append(_form_encode(unquote_plus(raw_value)))
    if len(values) != 1:
        raise ComponentError(f"query parameter {name!r} must occur exactly once (found {len(values)})")
    return values[0]


def _field_value(request: RequestView, component: Component) -> str:
    lines = request.headers.getall(component.name, [])
    if not lines:
        raise ComponentError(f"covered field {component.name!r} is absent")
    params = component.params
    if not params:
        return ", ".join(line.strip() for line in lines)
    if "bs" in params:
        return ", ".join(f":{base64.b64encode(line.strip().encode('latin-1')).decode()}:" for line in lines)
    combined = ", ".join(line.strip() for line in lines)
    try:
        if "key" in params:
            member = sfv.parse_dictionary(combined).get(str(params["key"]))
            if member is None:
                raise ComponentError(f"covered field {component.name!r} has no member {params['key']!r}")
            if isinstance(member, sfv.InnerList):
                return sfv.serialize_inner_list(member)
            return sfv.serialize_item(member)
        if component.name in _DICTIONARY_FIELDS:
            return sfv.serialize_dictionary(sfv.parse_dictionary(combined))
        if component.name in _LIST_FIELDS:
            return sfv.serialize_list(sfv.parse_list(combined))
    except sfv.SFVError:
        raise ComponentError(f"covered field {component.name!r} is not a valid structured field") from None
    raise ComponentError(f"structured type of field {component.name!r} is unknown")


def component_value(request: RequestView, component: Component) -> str:
    name = component.name
    if name == "@method":
        return request.method
    if name == "@authority":
        return _authority(request)
    if name == "@path":
        return request.path or "/"
    if name == "@query":
        return "?" + (request.query or "")
    if name == "@scheme":
        return request.scheme.lower()
    if name == "@request-target":
        return request.path + ("" if request.query is None else "?" + request.query)
    if name == "@target-uri":
        tail = "" if request.query is None else "?" + request.query
        return f"{request.scheme.lower()}://{_authority(request)}{request.path or '/'}{tail}"
    if name == "@query-param":
        return _query_param(request, component.params["name"])
    return _field_value(request, component)


def signature_base(request: RequestView, components: Sequence[Component], signature_params: str) -> bytes:
    """The RFC 9421 §2.5 signature base (bytes, ASCII)."""
    lines = []
    for component in components:
        value = component_value(request, component)
        if "\n" in value or "\r" in value:
            raise ComponentError(f"value of {component.identifier} contains a line break")
        lines.append(f"{component.identifier}: {value}")
    lines.append(f'"@signature-params": {signature_params}')
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise ComponentError("a covered component contains non-ASCII characters") from None


# -- signing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignatureHeaders:
    signature_input: str
    signature: str


def signature_params(
    components: Sequence[Component],
    *,
    created: int,
    key_id: str,
    nonce: str | None,
    tag: str | None,
    include_alg: bool = True,
) -> str:
    """Serialise the inner list of parameters we emit (RFC-registered parameters only).

    Key ids, nonces and tags are validated at load or config time to need no escaping.
    """
    params = f';created={created};keyid="{key_id}"'
    if include_alg:
        params += f';alg="{ALGORITHM}"'
    if nonce is not None:
        params += f';nonce="{nonce}"'
    if tag is not None:
        params += f';tag="{tag}"'
    return "(" + " ".join(c.identifier for c in components) + ")" + params


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
    base = signature_base(request, components, params)
    mac = hmac.digest(key.material, base, "sha256")
    return SignatureHeaders(
        signature_input=f"{label}={params}", signature=f"{label}=:{base64.b64encode(mac).decode()}:"
    )


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """What a verify route demands of a signature beyond the RFC itself."""

    required: frozenset[str] = frozenset(Component.parse(n).identifier for n in DEFAULT_COMPONENTS)
    window_past: int = 300
    window_future: int = 30
    require_nonce: bool = False
    require_alg: bool = False
    expected_tag: str | None = None
    max_signatures: int = 8


class Verified(NamedTuple):
    label: str
    key_id: str
    created: int
    replay_token: str  # the nonce if there is one, else the signature itself
    base_sha256: str


class SignatureFailure(VerificationError):
    """A VerificationError that may carry the signature base (for logs and opt-in debug)."""

    def __init__(self, reason: Reason, detail: str, base: bytes | None = None) -> None:
        super().__init__(reason, detail)
        self.signature_base = base
        self.base_sha256 = hashlib.sha256(base).hexdigest() if base is not None else ""


class Candidate(NamedTuple):
    """A signature that passed every check that needs no body: what is left is digest and MAC."""

    label: str
    components: tuple[Component, ...]
    params: sfv.Params
    params_text: str  # the serialised inner list: the "@signature-params" value
    provided: bytes
    keys: tuple[Key, ...]
    created: int
    nonce: str | None


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
    inputs_text = ", ".join(inputs_lines)
    try:
        inputs: dict[str, sfv.Member | _FastInput] = _fast_signature_input(inputs_text) or dict(
            sfv.parse_dictionary(inputs_text)
        )
        signatures = _fast_signature(", ".join(signature_lines))
    except sfv.SFVError as exc:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"signature headers: {exc}") from None
    if len(inputs) > policy.max_signatures:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, f"more than {policy.max_signatures} signatures")
    labels = [label for label in inputs if label in signatures]
    if not labels:
        raise VerificationError(Reason.MALFORMED_SIGNATURE, "no label appears in both Signature-Input and Signature")
    if policy.expected_tag is not None:
        labels = [lb for lb in labels if _tag_of(inputs[lb]) == policy.expected_tag]
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


# Fast paths for the common case: one signature, in canonical form. They accept only canonical
# syntax (plain component names; known parameters with escape-free strings or integers without
# leading zeros), so the matched text *is* the serialisation RFC 9421 puts in the signature
# base. Anything else falls through to the full RFC 8941 parser; tests check that both
# paths agree.
_KEY = r"[a-z*][a-z0-9_\-.*]*"
_NAME_STRING = r'"[!#-\[\]-~]*"'  # a component name: an sf-string without spaces (names have none)
_FAST_HEAD = re.compile(rf"({_KEY})=\(((?:{_NAME_STRING}(?: {_NAME_STRING})*)?)\)")
_FAST_SIGNATURE = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]*=?=?):")
# Senders repeat the same label and component list on every request; only the parameters
# (created, nonce) change. Parsed heads are kept, up to a bound an attacker cannot grow.
_HEAD_CACHE: dict[str, tuple[str, str, tuple[Component, ...]]] = {}
_HEAD_CACHE_MAX = 256


class _FastInput(NamedTuple):
    """A canonical Signature-Input member, parsed without building structured-field objects."""

    components: tuple[Component, ...]
    params: sfv.Params
    serialized: str


def _fast_head(head: str) -> tuple[str, str, tuple[Component, ...]] | None:
    """(label, "(...)" as sent, components) for a canonical ``label=("a" "b")``, else None."""
    cached = _HEAD_CACHE.get(head)
    if cached is not None:
        return cached
    match = _FAST_HEAD.fullmatch(head)
    if match is None:
        return None
    label, items_text = match.groups()
    try:
        components = tuple(_plain_component(name[1:-1]) for name in items_text.split(" ")) if items_text else ()
    except ComponentError:
        return None  # the full path reports it with its own wording
    parsed = (label, head[len(label) + 1 :], components)
    if len(_HEAD_CACHE) < _HEAD_CACHE_MAX:
        _HEAD_CACHE[head] = parsed
    return parsed


def _fast_signature_input(text: str) -> dict[str, sfv.Member | _FastInput] | None:
    """{label: parsed} for a single canonical member, else None (use the full parser)."""
    close = text.find(")")
    head = _fast_head(text[: close + 1]) if close > 0 else None
    if head is None:
        return None
    params_text = text[close + 1 :]
    params = _fast_params(params_text)
    if params is None:
        return None
    label, inner, components = head
    return {label: _FastInput(components, params, inner + params_text)}


def _fast_params(text: str) -> sfv.Params | None:
    """``;created=1;keyid="k"...`` when every parameter is a known one, given once, with a
    non-negative integer (no leading zero) or a string with no quote, backslash or non-printable
    character; else None. Such text is its own canonical serialisation."""
    params: sfv.Params = {}
    if not text:
        return params
    if text[0] != ";":
        return None
    for part in text[1:].split(";"):
        key, eq, value = part.partition("=")
        if not eq or key not in SIGNATURE_PARAMETERS or key in params:
            return None  # bare keys, unknown or repeated parameters: the full parser decides
        if value[:1] == '"':
            inner = value[1:-1]
            if (
                len(value) < 2
                or value[-1] != '"'
                or '"' in inner
                or "\\" in inner
                or not inner.isascii()
                or not inner.isprintable()
            ):
                return None  # also a ';' inside a string: split apart, it fails these checks
            params[key] = inner
        elif value.isascii() and value.isdigit() and len(value) <= 15 and (value[0] != "0" or value == "0"):
            params[key] = int(value)
        else:
            return None
    return params


def _plain_component(name: str) -> Component:
    cached = _PLAIN_COMPONENTS.get(name)
    return cached if cached is not None else Component.from_item(sfv.Item(name, {}))


def _fast_signature(text: str) -> dict[str, sfv.Member]:
    match = _FAST_SIGNATURE.fullmatch(text)
    if match is not None:
        value = canonical_b64decode(match[2])
        if value is not None:
            return {match[1]: sfv.Item(value, {})}
    return sfv.parse_dictionary(text)  # anything not canonical: the full parser's rules decide


def canonical_b64decode(text: str) -> bytes | None:
    """The bytes of ``text`` if it is base64 in canonical form (the exact padding, zero pad
    bits), else None. ``b64decode`` alone also takes e.g. ``QUJD=``, which RFC 8941 refuses."""
    try:
        value = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return value if base64.b64encode(value).decode() == text else None


def _tag_of(member: sfv.Member | _FastInput) -> object:
    return member.params.get("tag")


def _claimed_key_id(params: sfv.Params) -> str:
    """The sender's keyid parameter, for logs (sf-strings are printable ASCII already)."""
    key_id = params.get("keyid")
    return key_id[:128] if type(key_id) is str else ""


def _check_one(
    keyring: Keyring,
    policy: VerifyPolicy,
    now: float,
    label: str,
    member: sfv.Member | _FastInput,
    signature_member: sfv.Member,
) -> Candidate:
    malformed = Reason.MALFORMED_SIGNATURE
    if not isinstance(signature_member, sfv.Item) or not isinstance(signature_member.value, bytes):
        raise VerificationError(malformed, f"Signature {label!r} must be a byte sequence")
    if isinstance(member, _FastInput):
        components, params_text = member.components, member.serialized
    elif isinstance(member, sfv.InnerList):
        try:
            components = tuple(Component.from_item(item) for item in member.items)
            params_text = sfv.serialize_inner_list(member)
        except (ComponentError, sfv.SFVError) as exc:
            raise VerificationError(malformed, str(exc)) from None
    else:
        raise VerificationError(malformed, f"Signature-Input {label!r} must be an inner list")
    covered = {c.identifier for c in components}
    if len(covered) != len(components):
        raise VerificationError(malformed, "a component is covered twice")

    params = member.params
    for name, value in params.items():
        if name not in SIGNATURE_PARAMETERS:
            raise VerificationError(malformed, f"unknown signature parameter {name!r}")
        wants_int = name in ("created", "expires")
        if (type(value) is not int) if wants_int else (type(value) is not str):
            kind = "an integer" if wants_int else "a string"
            raise VerificationError(malformed, f"signature parameter {name!r} must be {kind}")
    alg = params.get("alg")
    if alg is not None and alg != ALGORITHM:
        raise VerificationError(Reason.UNSUPPORTED_ALGORITHM, f"alg {alg!r} is not {ALGORITHM!r}")
    for name, required in (("alg", policy.require_alg), ("nonce", policy.require_nonce), ("created", True)):
        if required and name not in params:
            raise VerificationError(Reason.MISSING_PARAMETER, f"signature parameter {name!r} is required")
    missing = sorted(policy.required - covered)
    if missing:
        raise VerificationError(Reason.INSUFFICIENT_COVERAGE, f"signature must cover {' '.join(missing)}")

    created = params["created"]
    assert isinstance(created, int)
    if now - created > policy.window_past:
        raise VerificationError(Reason.STALE, f"created more than {policy.window_past}s ago")
    if created - now > policy.window_future:
        raise VerificationError(Reason.FUTURE, f"created more than {policy.window_future}s in the future")
    expires = params.get("expires")
    if isinstance(expires, int) and now >= expires:
        raise VerificationError(Reason.STALE, "signature has expired")

    key_id = params.get("keyid")
    keys = (keyring.verifying_key(key_id, now),) if isinstance(key_id, str) else tuple(keyring.verifying_keys(now))
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
        created=created,
        nonce=nonce if isinstance(nonce, str) else None,
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
        if hmac.compare_digest(hmac.digest(key.material, base, "sha256"), provided):
            token = candidate.nonce if candidate.nonce is not None else base64.b64encode(provided).decode()
            return Verified(
                label=candidate.label,
                key_id=key.id,
                created=candidate.created,
                replay_token=token,
                base_sha256=hashlib.sha256(base).hexdigest(),
            )
    raise SignatureFailure(Reason.SIGNATURE_MISMATCH, "signature does not verify", base)
