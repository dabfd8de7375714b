"""Structured Field Values (RFC 9651, which obsoletes RFC 8941): a thin typed adapter over ``http-sf``.

``http-sf`` (the reference implementation by the RFC's editor) does the parsing and the
serialising; this module only bounds what it is given and gives the result types the rest of
the signing code can check with ``isinstance``.

Invariants:

- For any ``str`` input, every ``parse_*`` function either returns a fully validated structure
  or raises :class:`StructuredFieldError`; no other exception escapes.
- Sizes are bounded *before* parsing: a field value longer than ``max_length`` characters, or
  with a character outside ASCII (never valid in a structured field), is refused without being
  scanned. Member counts (top-level members, items of an inner list, parameters of one item)
  are bounded as the parsed value is read, so nothing downstream ever loops over more than
  ``max_members`` of anything.
- Error messages carry an offset, never the input: they may reach a client or a log line.

Types, as ``http-sf`` returns them:

=================  ===================================================
SFV type           Python
=================  ===================================================
Integer            ``int`` (never ``bool``)
Decimal            ``decimal.Decimal``
String             ``str``
Token              ``http_sf.Token`` (not a ``str``: ``type(v) is str`` tells them apart)
Display String     ``http_sf.DisplayString`` (RFC 9651; not a ``str`` either)
Byte Sequence      ``bytes``
Boolean            ``bool``
Date               ``datetime.datetime``, aware, UTC (RFC 9651)
=================  ===================================================

Padding of Byte Sequences follows RFC 9651 §4.2.7 as ``http-sf`` implements it: missing or
partial ``=`` padding and non-zero pad bits are accepted, and the decoded bytes are what counts
(the verifier compares bytes, in constant time, and never the text).
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any, NamedTuple, TypeAlias

import http_sf
from http_sf import DisplayString, Token
from http_sf.bare_item import ser_bare_item
from http_sf.innerlist import ser_innerlist
from http_sf.item import ser_item
from http_sf.parameters import ser_params

__all__ = [
    "MAX_LENGTH",
    "MAX_MEMBERS",
    "BareItem",
    "DisplayString",
    "InnerList",
    "Item",
    "Member",
    "Params",
    "StructuredFieldError",
    "Token",
    "parse_dictionary",
    "parse_item",
    "parse_list",
    "serialize_bare_item",
    "serialize_dictionary",
    "serialize_inner_list",
    "serialize_item",
    "serialize_list",
    "serialize_member",
]

MAX_LENGTH = 16 * 1024  # characters of one (combined) field value; aiohttp allows 8190 per line
MAX_MEMBERS = 64  # top-level members, items of one inner list, parameters of one item or list

BareItem: TypeAlias = int | Decimal | str | bool | bytes | Token | DisplayString | datetime.datetime
Params: TypeAlias = dict[str, BareItem]


class StructuredFieldError(ValueError):
    """Input is not a valid (or is an oversized) structured field, or a value cannot be serialised."""


# NamedTuples, not frozen dataclasses: the slow path builds one per member and item, and a
# frozen dataclass costs several times as much to build.
class Item(NamedTuple):
    value: BareItem
    params: Params


class InnerList(NamedTuple):
    items: tuple[Item, ...]
    params: Params


Member: TypeAlias = Item | InnerList


# -- parsing ---------------------------------------------------------------------------------


def parse_dictionary(text: str, *, max_length: int = MAX_LENGTH, max_members: int = MAX_MEMBERS) -> dict[str, Member]:
    parsed = _parse(text, "dictionary", max_length)
    assert isinstance(parsed, dict)
    _bound(len(parsed), max_members, "dictionary members")
    return {key: _member(value, max_members) for key, value in parsed.items()}


def parse_list(text: str, *, max_length: int = MAX_LENGTH, max_members: int = MAX_MEMBERS) -> list[Member]:
    parsed = _parse(text, "list", max_length)
    assert isinstance(parsed, list)
    _bound(len(parsed), max_members, "list members")
    return [_member(value, max_members) for value in parsed]


def parse_item(text: str, *, max_length: int = MAX_LENGTH, max_members: int = MAX_MEMBERS) -> Item:
    return _item(_parse(text, "item", max_length), max_members)


def _parse(text: str, kind: str, max_length: int) -> Any:
    if type(text) is not str:
        raise StructuredFieldError(f"a {kind} field value must be text")
    if len(text) > max_length:
        raise StructuredFieldError(f"{kind} field value longer than {max_length} characters")
    if not text.isascii():
        # A structured field is ASCII; aiohttp hands over other bytes as UTF-8 or surrogates.
        raise StructuredFieldError(f"non-ASCII character at offset {_first_non_ascii(text)}")
    try:
        return http_sf.parse(text.encode("ascii"), tltype=kind)
    except http_sf.StructuredFieldError as exc:
        # http-sf's own message may quote the input; ours gives only the offset.
        raise StructuredFieldError(f"invalid {kind} structured field at offset {exc.position}") from None
    except (ValueError, TypeError, OverflowError):  # nothing else is documented; never let it escape
        raise StructuredFieldError(f"invalid {kind} structured field") from None


def _first_non_ascii(text: str) -> int:
    return next(i for i, char in enumerate(text) if not char.isascii())


def _bound(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise StructuredFieldError(f"more than {limit} {what}")


def _params(raw: Any, limit: int) -> Params:
    _bound(len(raw), limit, "parameters")
    return raw  # type: ignore[no-any-return]  # a fresh dict from each parse: no copy needed


def _item(raw: Any, limit: int) -> Item:
    value, params = raw
    return Item(value, _params(params, limit))


def _member(raw: Any, limit: int) -> Member:
    value, params = raw
    if isinstance(value, list):
        _bound(len(value), limit, "inner list items")
        return InnerList(tuple(_item(i, limit) for i in value), _params(params, limit))
    return Item(value, _params(params, limit))


# -- serialising ------------------------------------------------------------------------------


def serialize_bare_item(value: BareItem) -> str:
    return _serialize(ser_bare_item, value)


def serialize_params(params: Params) -> str:
    return _serialize(ser_params, params)


def serialize_item(item: Item) -> str:
    return _serialize(ser_item, _raw(item))


def serialize_inner_list(inner: InnerList) -> str:
    return _serialize(ser_innerlist, _raw(inner))


def serialize_member(member: Member) -> str:
    return serialize_inner_list(member) if isinstance(member, InnerList) else serialize_item(member)


# An empty List or Dictionary serialises to "" (the corpus's canonical form), which http-sf
# refuses to emit as a field; a covered empty field still has a value, the empty one.


def serialize_list(members: list[Member]) -> str:
    if not members and type(members) is list:
        return ""
    return _serialize(http_sf.ser, [_raw(m) for m in members])


def serialize_dictionary(members: dict[str, Member]) -> str:
    if not members and type(members) is dict:
        return ""
    return _serialize(http_sf.ser, {key: _raw(m) for key, m in members.items()})


def _raw(member: Member) -> Any:
    if isinstance(member, InnerList):
        return ([_raw(i) for i in member.items], member.params)
    if isinstance(member, Item):
        return (member.value, member.params)
    raise StructuredFieldError(f"not an Item or InnerList: {type(member).__name__}")


def _serialize(function: Any, value: Any) -> str:
    try:
        out = function(value)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise StructuredFieldError(f"cannot serialise: {exc}") from None
    assert isinstance(out, str)
    return out
