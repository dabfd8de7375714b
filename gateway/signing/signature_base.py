"""RFC 9421 covered components, their values, and the signature base. Pure: no I/O.

The pipeline's first two steps, each a function: ``component_value`` (RFC 9421 §2.1, §2.2)
-> ``signature_base`` (§2.5: one ``"name": value`` line per component in ``Signature-Input``
order, lower-case names, LF-joined, ``"@signature-params"`` last, no trailing LF, ASCII only).
``signature_params`` serialises the parameters we emit.

Invariant: every way a request's content can make a component unresolvable (absent field,
non-ASCII value, a line break, an invalid structured field, bytes that are not the wire's)
raises :class:`ComponentError`, whose message is safe to show the client; nothing else escapes.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from cachetools import LRUCache

from gateway.http_vocab import HOP_BY_HOP
from gateway.signing import structured as sf
from gateway.signing.scheme import RequestView

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
_OWS = " \t"  # HTTP optional whitespace (RFC 9110 §5.6.3): str.strip() alone also eats \x0c, \xa0...


class ComponentError(ValueError):
    """A covered component cannot be resolved (message is safe to show a client)."""


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    params: sf.Params
    identifier: str  # the serialised component identifier, as it appears in the base

    @classmethod
    def from_item(cls, item: sf.Item) -> Component:
        value = item.value
        if not item.params and type(value) is str:
            cached = plain_component_cached(value)
            if cached is not None:
                return cached
        component = cls._from_item(item)
        if not item.params:
            with _CACHE_LOCK:
                _PLAIN_COMPONENTS[component.name] = component
        return component

    @classmethod
    def _from_item(cls, item: sf.Item) -> Component:
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
        try:
            identifier = sf.serialize_item(item)
        except sf.StructuredFieldError as exc:
            raise ComponentError(f"component {value!r} cannot be serialised: {exc}") from None
        return cls(name=value, params=dict(item.params), identifier=identifier)

    @classmethod
    def parse(cls, text: str) -> Component:
        """From config: a bare name (``content-type``) or a serialised item (``"@query-param";name="a"``)."""
        try:
            item = sf.parse_item(text) if text.startswith('"') else sf.Item(text, {})
        except sf.StructuredFieldError as exc:
            raise ComponentError(f"{text!r} is not a component identifier: {exc}") from None
        return cls.from_item(item)


# Plain components ("@method", "content-digest") recur on every request: build each once. An
# LRU bound, so a sender cycling through made-up field names can neither grow it nor push out
# for good the names real senders use. The lock keeps LRU bookkeeping whole if several threads
# share this module (the gateway itself verifies on one event-loop thread).
_PLAIN_COMPONENTS: LRUCache[str, Component] = LRUCache(maxsize=512)
_CACHE_LOCK = threading.Lock()


def plain_component_cached(name: str) -> Component | None:
    try:
        with _CACHE_LOCK:
            return _PLAIN_COMPONENTS[name]  # [] not .get(): Cache.get looks the key up twice
    except KeyError:
        return None


def plain_component(name: str) -> Component:
    """The component for a parameterless name, cached."""
    cached = plain_component_cached(name)
    return cached if cached is not None else Component.from_item(sf.Item(name, {}))


def _check_field_params(name: str, params: sf.Params) -> None:
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


def field_names(components: Iterable[Component]) -> frozenset[str]:
    """The header fields among ``components`` (derived ones, "@...", are not fields)."""
    return frozenset(c.name for c in components if c.name[0] != "@")


def parse_components(names: Iterable[str]) -> tuple[Component, ...]:
    components = tuple(Component.parse(n) for n in names)
    identifiers = [c.identifier for c in components]
    if len(set(identifiers)) != len(identifiers):
        raise ComponentError("a component is listed twice")
    return components


# -- component values ---------------------------------------------------------------------


def authority_value(request: RequestView) -> str:
    """The ``@authority`` value: lower case, without the scheme's default port."""
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


def wire_bytes(value: str) -> bytes:
    """The bytes a header value had on the wire (see ``RequestView``), or ComponentError."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no decoded byte produces
        raise ComponentError("a covered field value is not text decoded from HTTP bytes") from None


def _byte_sequence_value(lines: Sequence[str]) -> str:
    # RFC 9421 §2.1.3: each field line separately, OWS trimmed, as a Byte Sequence.
    return ", ".join(f":{base64.b64encode(wire_bytes(line.strip(_OWS))).decode()}:" for line in lines)


def _structured_value(component: Component, combined: str) -> str:
    params = component.params
    try:
        if "key" in params:
            member = sf.parse_dictionary(combined).get(str(params["key"]))
            if member is None:
                raise ComponentError(f"covered field {component.name!r} has no member {params['key']!r}")
            return sf.serialize_member(member)
        if component.name in _DICTIONARY_FIELDS:
            return sf.serialize_dictionary(sf.parse_dictionary(combined))
        if component.name in _LIST_FIELDS:
            return sf.serialize_list(sf.parse_list(combined))
    except sf.StructuredFieldError:
        raise ComponentError(f"covered field {component.name!r} is not a valid structured field") from None
    raise ComponentError(f"structured type of field {component.name!r} is unknown")


def _field_value(request: RequestView, component: Component) -> str:
    lines = request.headers.getall(component.name, [])
    if not lines:
        raise ComponentError(f"covered field {component.name!r} is absent")
    params = component.params
    if "bs" in params:
        return _byte_sequence_value(lines)
    combined = ", ".join(line.strip(_OWS) for line in lines)
    return _structured_value(component, combined) if params else combined


def component_value(request: RequestView, component: Component) -> str:
    name = component.name
    if name == "@method":
        return request.method
    if name == "@authority":
        return authority_value(request)
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
        return f"{request.scheme.lower()}://{authority_value(request)}{request.path or '/'}{tail}"
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
