"""Canonical fast paths for the common ``Signature-Input`` and ``Signature``. Pure: no I/O.

Senders nearly always send one signature, in canonical form, with the same label and
component list on every request; only ``created`` and ``nonce`` change. These functions accept
only canonical syntax (plain component names; known parameters, each once, with escape-free
strings or integers without leading zeros; base64 with exact padding), so the matched text *is*
the serialisation RFC 9421 puts in the signature base. Anything else returns None, and the
caller hands the field to the full parser (``http-sf``, through ``structured``); property tests
check that the two agree on every input the fast path takes.

Parsed heads (``label=("a" "b")``) are kept in a bounded LRU cache: junk cannot grow it, and
cannot keep a real sender's head out of it either.
"""

from __future__ import annotations

import base64
import re
import threading
from typing import NamedTuple, TypeAlias

from cachetools import LRUCache

from gateway.signing import structured as sf
from gateway.signing.signature_base import (
    SIGNATURE_PARAMETERS,
    Component,
    ComponentError,
    field_names,
    plain_component,
)

_KEY = r"[a-z*][a-z0-9_\-.*]*"
_NAME_STRING = r'"[!#-\[\]-~]*"'  # a component name: an sf-string without spaces (names have none)
_FAST_HEAD = re.compile(rf"({_KEY})=\(((?:{_NAME_STRING}(?: {_NAME_STRING})*)?)\)")
_FAST_SIGNATURE = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]*=?=?):")
Head: TypeAlias = tuple[str, str, tuple[Component, ...], frozenset[str]]
# "label=(...)" text -> (label, "(...)" as sent, components, the covered field names)
_HEAD_CACHE: LRUCache[str, Head] = LRUCache(maxsize=256)
_CACHE_LOCK = threading.Lock()  # LRU reads reorder: one lock, should threads share the module


class FastInput(NamedTuple):
    """A canonical Signature-Input member, parsed without building structured-field objects."""

    components: tuple[Component, ...]
    params: sf.Params
    serialized: str  # the inner list with its parameters: the "@signature-params" value
    fields: frozenset[str]  # the covered header fields


def fast_head(head: str) -> Head | None:
    """(label, "(...)" as sent, components, field names) for a canonical ``label=("a" "b")``, else None."""
    try:
        with _CACHE_LOCK:
            return _HEAD_CACHE[head]  # [] not .get(): Cache.get looks the key up twice
    except KeyError:
        pass
    match = _FAST_HEAD.fullmatch(head)
    if match is None:
        return None
    label, items_text = match.groups()
    try:
        components = tuple(plain_component(name[1:-1]) for name in items_text.split(" ")) if items_text else ()
    except ComponentError:
        return None  # the full path reports it with its own wording
    parsed = (label, head[len(label) + 1 :], components, field_names(components))
    with _CACHE_LOCK:
        _HEAD_CACHE[head] = parsed
    return parsed


def fast_signature_input(text: str) -> dict[str, FastInput] | None:
    """{label: parsed} for a single canonical member, else None (use the full parser)."""
    close = text.find(")")
    head = fast_head(text[: close + 1]) if close > 0 else None
    if head is None:
        return None
    params_text = text[close + 1 :]
    params = fast_params(params_text)
    if params is None:
        return None
    label, inner, components, fields = head
    return {label: FastInput(components, params, inner + params_text, fields)}


def fast_params(text: str) -> sf.Params | None:
    """``;created=1;keyid="k"...`` when every parameter is a known one, given once, with a
    non-negative integer (no leading zero) or a string with no quote, backslash or non-printable
    character; else None. Such text is its own canonical serialisation."""
    params: sf.Params = {}
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


def parse_signature(text: str) -> dict[str, sf.Member]:
    """The Signature field: the fast path for one canonical member, else the full parser."""
    match = _FAST_SIGNATURE.fullmatch(text)
    if match is not None:
        value = canonical_b64decode(match[2])
        if value is not None:
            return {match[1]: sf.Item(value, {})}
    return sf.parse_dictionary(text)  # anything not canonical: the full parser's rules decide


def canonical_b64decode(text: str) -> bytes | None:
    """The bytes of ``text`` if it is base64 in canonical form (the exact padding, zero pad
    bits), else None: the full parser accepts other forms (RFC 9651 §4.2.7) and decides them."""
    try:
        value = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return value if base64.b64encode(value).decode() == text else None
