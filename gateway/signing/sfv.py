"""Structured Field Values (RFC 8941, with the RFC 9651 Date and Display String types).

Invariant: for any ``str`` input, every ``parse_*`` function either returns a fully validated
structure or raises :class:`SFVError`; no other exception escapes, and the input is never echoed
into an error message (only offsets are). Every ``serialize_*`` function either returns text that
the parsers accept back unchanged or raises :class:`SFVError`.

The parsers scan a ``str`` by index. The only regular expressions are single character-class runs
(linear, no backtracking), used because a C-level run beats a Python loop per character.

Python representation of the data model:

=================  =================================================
SFV type           Python
=================  =================================================
Integer            ``int`` (never ``bool``)
Decimal            ``float``
String             ``str``
Token              :class:`Token` (a ``str`` subclass)
Display String     :class:`DisplayString` (a ``str`` subclass)
Byte Sequence      ``bytes``
Boolean            ``bool``
Date               :class:`Date`
Parameters         ``dict[str, BareItem]`` (insertion ordered)
Inner List         :class:`InnerList`
Item               :class:`Item`
=================  =================================================

A duplicate dictionary or parameter key overwrites the earlier value but keeps the earlier
position, as the HTTP WG test corpus expects (plain ``dict`` assignment does exactly that).
"""

from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeAlias

__all__ = [
    "BareItem",
    "Date",
    "DisplayString",
    "InnerList",
    "Item",
    "Member",
    "Params",
    "SFVError",
    "Token",
    "parse_dictionary",
    "parse_item",
    "parse_list",
    "serialize_bare_item",
    "serialize_dictionary",
    "serialize_inner_list",
    "serialize_item",
    "serialize_list",
    "serialize_params",
]


class SFVError(ValueError):
    """Input is not a valid structured field, or a value cannot be serialised as one."""


class Token(str):
    """A Token bare item; compares equal to a plain ``str`` but serialises unquoted."""

    __slots__ = ()


class DisplayString(str):
    """An RFC 9651 Display String (``%"..."``): Unicode text, percent-encoded UTF-8 on the wire."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Date:
    """An RFC 9651 Date: integer seconds since the Unix epoch."""

    value: int


BareItem: TypeAlias = int | float | str | Token | DisplayString | bytes | bool | Date
Params: TypeAlias = dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Params


@dataclass(frozen=True, slots=True)
class InnerList:
    items: list[Item]
    params: Params


Member: TypeAlias = Item | InnerList

_MAX_INT = 999_999_999_999_999
_DECIMAL_LIMIT = 1e12  # a Decimal's integer part has at most 12 digits
_THOUSANDTH = Decimal("0.001")

# Single character-class runs only: each runs in linear time with nothing to backtrack into.
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_PARAM_KEY = re.compile(r"; *([a-z*][a-z0-9_\-.*]*)")  # ";", optional SP, key
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?([0-9]+)(\.[0-9]*)?")
_STRING_PLAIN = re.compile(r'"([ !#-\[\]-~]*)"')  # a String without escapes (the common case)
_STRING_RUN = re.compile(r"[ !#-\[\]-~]*")  # String characters other than DQUOTE and backslash
_DISPLAY_RUN = re.compile(r"[ !#$&-~]*")  # Display String characters other than DQUOTE and %
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
_PRINTABLE = re.compile(r"[ -~]*")
_LOWER_HEX = frozenset("0123456789abcdef")
# Display String serialisation: "%", DQUOTE and anything outside printable ASCII is %xx-encoded.
_DISPLAY_ENCODE = tuple(f"%{b:02x}" if b in (0x22, 0x25) or not 0x20 <= b <= 0x7E else chr(b) for b in range(256))

_match_key = _KEY.match
_match_param_key = _PARAM_KEY.match
_match_token = _TOKEN.match
_match_number = _NUMBER.match
_match_string_plain = _STRING_PLAIN.match
_match_string_run = _STRING_RUN.match
_match_display_run = _DISPLAY_RUN.match
_full_key = _KEY.fullmatch
_full_token = _TOKEN.fullmatch
_full_base64 = _BASE64.fullmatch
_full_printable = _PRINTABLE.fullmatch


# --------------------------------------------------------------------------------------------
# Parsing. Each helper takes (text, start, end) and returns (value, next offset).
# --------------------------------------------------------------------------------------------


def _fail(what: str, pos: int) -> SFVError:
    return SFVError(f"{what} at offset {pos}")


def _begin(text: str) -> int:
    if not isinstance(text, str):
        raise SFVError("structured field input must be str")
    if not text.isascii():
        raise SFVError("structured field contains non-ASCII characters")
    i = 0
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    return i


def _finish(text: str, i: int, n: int) -> None:
    while i < n and text[i] == " ":
        i += 1
    if i != n:
        raise _fail("unexpected trailing characters", i)


def _skip_ows(text: str, i: int, n: int) -> int:
    while i < n and (text[i] == " " or text[i] == "\t"):
        i += 1
    return i


def _parse_number(text: str, i: int) -> tuple[int | float, int]:
    m = _match_number(text, i)
    if m is None:
        raise _fail("invalid number", i)
    int_digits, frac = m.group(1, 2)
    end = m.end()
    if frac is None:
        if len(int_digits) > 15:
            raise _fail("integer has more than 15 digits", i)
        return int(text[i:end]), end
    if len(int_digits) > 12:
        raise _fail("decimal has more than 12 integer digits", i)
    if not 1 < len(frac) < 5:  # frac includes the dot
        raise _fail("decimal needs 1 to 3 fractional digits", i)
    return float(text[i:end]), end


def _parse_string(text: str, i: int, n: int) -> tuple[str, int]:
    m = _match_string_plain(text, i)
    if m is not None:
        return m.group(1), m.end()
    parts: list[str] = []
    j = i + 1
    while True:
        run = _match_string_run(text, j)
        k = run.end() if run is not None else j  # a "*" run always matches
        if k >= n:
            raise _fail("unterminated string", i)
        c = text[k]
        if c == '"':
            parts.append(text[j:k])
            return "".join(parts), k + 1
        if c != "\\":
            raise _fail("invalid character in string", k)
        if k + 1 >= n:
            raise _fail("unterminated string", i)
        esc = text[k + 1]
        if esc not in '"\\':  # esc is exactly one character
            raise _fail("invalid escape in string", k)
        parts.append(text[j:k])
        parts.append(esc)
        j = k + 2


def _parse_display_string(text: str, i: int, n: int) -> tuple[DisplayString, int]:
    if i + 1 >= n or text[i + 1] != '"':
        raise _fail("invalid display string", i)
    j = i + 2
    buf: bytearray | None = None
    while True:
        run = _match_display_run(text, j)
        k = run.end() if run is not None else j  # a "*" run always matches
        if k >= n:
            raise _fail("unterminated display string", i)
        c = text[k]
        if c == '"':
            if buf is None:
                return DisplayString(text[j:k]), k + 1
            buf += text[j:k].encode("ascii")
            try:
                return DisplayString(buf.decode("utf-8")), k + 1
            except UnicodeDecodeError:
                raise _fail("display string is not valid UTF-8", i) from None
        if c != "%":
            raise _fail("invalid character in display string", k)
        hexpair = text[k + 1 : k + 3]
        if len(hexpair) != 2 or hexpair[0] not in _LOWER_HEX or hexpair[1] not in _LOWER_HEX:
            raise _fail("invalid percent-encoding in display string", k)
        if buf is None:
            buf = bytearray()
        buf += text[j:k].encode("ascii")
        buf.append(int(hexpair, 16))
        j = k + 3


def _parse_byte_sequence(text: str, i: int, n: int) -> tuple[bytes, int]:
    end = text.find(":", i + 1, n)
    if end < 0:
        raise _fail("unterminated byte sequence", i)
    body = text[i + 1 : end]
    data = body.rstrip("=")
    pad = len(body) - len(data)
    if _full_base64(data) is None:
        raise _fail("invalid base64 in byte sequence", i)
    need = -len(data) % 4
    # RFC 8941 §4.2.7: do not fail on absent padding; a partial or excess run of "=" is an error.
    if need == 3 or (pad and pad != need):
        raise _fail("invalid base64 padding in byte sequence", i)
    try:
        # Non-strict a2b_base64 tolerates non-zero pad bits, as RFC 8941 §4.2.7 asks.
        return binascii.a2b_base64(data + "=" * need), end + 1
    except binascii.Error:  # pragma: no cover - the checks above leave nothing for it to reject
        raise _fail("invalid byte sequence", i) from None


def _parse_bare_item(text: str, i: int, n: int) -> tuple[BareItem, int]:
    if i >= n:
        raise _fail("missing item", i)
    c = text[i]
    if c == '"':
        return _parse_string(text, i, n)
    if c == "-" or "0" <= c <= "9":
        return _parse_number(text, i)
    if c == "?":
        if text.startswith("?1", i):
            return True, i + 2
        if text.startswith("?0", i):
            return False, i + 2
        raise _fail("invalid boolean", i)
    if c == ":":
        return _parse_byte_sequence(text, i, n)
    if c == "@":
        value, end = _parse_number(text, i + 1)
        if isinstance(value, float):
            raise _fail("date must be an integer", i)
        return Date(value), end
    if c == "%":
        return _parse_display_string(text, i, n)
    m = _match_token(text, i)
    if m is None:
        raise _fail("invalid item", i)
    end = m.end()
    return Token(text[i:end]), end


def _parse_params(text: str, i: int, n: int) -> tuple[Params, int]:
    params: Params = {}
    while i < n and text[i] == ";":
        m = _match_param_key(text, i)
        if m is None:
            raise _fail("invalid parameter key", i)
        key = m.group(1)
        i = m.end()
        if i < n and text[i] == "=":
            params[key], i = _parse_bare_item(text, i + 1, n)
        else:
            params[key] = True
    return params, i


def _parse_item(text: str, i: int, n: int) -> tuple[Item, int]:
    value, i = _parse_bare_item(text, i, n)
    if i < n and text[i] == ";":
        params, i = _parse_params(text, i, n)
        return Item(value, params), i
    return Item(value, {}), i


def _parse_inner_list(text: str, i: int, n: int) -> tuple[InnerList, int]:
    start = i
    i += 1  # "("
    items: list[Item] = []
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] == ")":
            params, i = _parse_params(text, i + 1, n)
            return InnerList(items, params), i
        item, i = _parse_item(text, i, n)
        items.append(item)
        if i < n and text[i] != " " and text[i] != ")":
            raise _fail("expected space or ')' in inner list", i)
    raise _fail("unterminated inner list", start)


def _parse_member(text: str, i: int, n: int) -> tuple[Member, int]:
    if i < n and text[i] == "(":
        return _parse_inner_list(text, i, n)
    return _parse_item(text, i, n)


def parse_item(text: str) -> Item:
    """Parse a field value whose type is Item."""
    i = _begin(text)
    n = len(text)
    item, i = _parse_item(text, i, n)
    _finish(text, i, n)
    return item


def parse_list(text: str) -> list[Member]:
    """Parse a field value whose type is List (an empty value is an empty list)."""
    i = _begin(text)
    n = len(text)
    members: list[Member] = []
    while i < n:
        member, i = _parse_member(text, i, n)
        members.append(member)
        i = _skip_ows(text, i, n)
        if i >= n:
            break
        if text[i] != ",":
            raise _fail("expected ',' between list members", i)
        i = _skip_ows(text, i + 1, n)
        if i >= n:
            raise _fail("trailing comma in list", i)
    return members


def parse_dictionary(text: str) -> dict[str, Member]:
    """Parse a field value whose type is Dictionary (an empty value is an empty dictionary)."""
    i = _begin(text)
    n = len(text)
    result: dict[str, Member] = {}
    while i < n:
        m = _match_key(text, i)
        if m is None:
            raise _fail("invalid dictionary key", i)
        key = m.group()
        i = m.end()
        if i < n and text[i] == "=":
            result[key], i = _parse_member(text, i + 1, n)
        else:
            params, i = _parse_params(text, i, n)
            result[key] = Item(True, params)
        i = _skip_ows(text, i, n)
        if i >= n:
            break
        if text[i] != ",":
            raise _fail("expected ',' between dictionary members", i)
        i = _skip_ows(text, i + 1, n)
        if i >= n:
            raise _fail("trailing comma in dictionary", i)
    return result


# --------------------------------------------------------------------------------------------
# Serialisation.
# --------------------------------------------------------------------------------------------


def _serialize_integer(v: int) -> str:
    if not -_MAX_INT <= v <= _MAX_INT:
        raise SFVError("integer out of range")
    return int.__repr__(v)


def _serialize_decimal(v: float) -> str:
    if not math.isfinite(v):
        raise SFVError("decimal must be finite")
    if abs(v) >= _DECIMAL_LIMIT:
        raise SFVError("decimal has more than 12 integer digits")
    # Round the shortest decimal that denotes v (what the caller wrote), not v's exact binary
    # expansion: 0.0025 must become 0.002 under round-half-even, as the corpus expects.
    text = float.__repr__(v)
    if "e" not in text:
        frac_len = len(text) - text.index(".") - 1
        if frac_len <= 3:
            return "0.0" if text == "-0.0" else text
    rounded = Decimal(text).quantize(_THOUSANDTH, rounding=ROUND_HALF_EVEN)
    if rounded.is_zero():
        return "0.0"
    out = format(rounded, "f").rstrip("0")
    if out.endswith("."):
        out += "0"
    if len(out.partition(".")[0].lstrip("-")) > 12:
        raise SFVError("decimal has more than 12 integer digits")
    return out


def _serialize_string(v: str) -> str:
    if _full_printable(v) is None:
        raise SFVError("string contains characters outside printable ASCII")
    if "\\" in v or '"' in v:
        v = v.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{v}"'


def _serialize_display_string(v: str) -> str:
    try:
        raw = v.encode("utf-8")
    except UnicodeEncodeError:
        raise SFVError("display string is not encodable as UTF-8") from None
    return '%"' + "".join(map(_DISPLAY_ENCODE.__getitem__, raw)) + '"'


def _serialize_key(key: object) -> str:
    if not isinstance(key, str) or _full_key(key) is None:
        raise SFVError("invalid key")
    return str.__str__(key)


def serialize_bare_item(v: BareItem) -> str:
    """Serialise one bare item; its Python type selects the SFV type (see the module docstring)."""
    if isinstance(v, bool):
        return "?1" if v else "?0"
    if isinstance(v, int):
        return _serialize_integer(v)
    if isinstance(v, float):
        return _serialize_decimal(v)
    if isinstance(v, DisplayString):
        return _serialize_display_string(v)
    if isinstance(v, Token):
        if _full_token(v) is None:
            raise SFVError("invalid token")
        return str.__str__(v)
    if isinstance(v, str):
        return _serialize_string(v)
    if isinstance(v, (bytes, bytearray)):
        return ":" + binascii.b2a_base64(v, newline=False).decode("ascii") + ":"
    if isinstance(v, Date):
        if isinstance(v.value, bool) or not isinstance(v.value, int):
            raise SFVError("date value must be an integer")
        return "@" + _serialize_integer(v.value)
    raise SFVError(f"unsupported bare item type {type(v).__name__}")


def serialize_params(params: Params) -> str:
    """Serialise parameters (``;key`` for a true Boolean, ``;key=value`` otherwise)."""
    if not isinstance(params, dict):
        raise SFVError("parameters must be a dict")
    out: list[str] = []
    for key, value in params.items():
        out.append(";")
        out.append(_serialize_key(key))
        if value is not True:
            out.append("=")
            out.append(serialize_bare_item(value))
    return "".join(out)


def serialize_item(item: Item) -> str:
    """Serialise an Item (bare item followed by its parameters)."""
    if not isinstance(item, Item):
        raise SFVError("expected an Item")
    return serialize_bare_item(item.value) + serialize_params(item.params)


def serialize_inner_list(il: InnerList) -> str:
    """Serialise an Inner List: ``(item item ...)`` followed by its parameters."""
    if not isinstance(il, InnerList) or not isinstance(il.items, (list, tuple)):
        raise SFVError("expected an InnerList")
    inner = " ".join([serialize_item(item) for item in il.items])
    return f"({inner}){serialize_params(il.params)}"


def _serialize_member(member: Member) -> str:
    if isinstance(member, InnerList):
        return serialize_inner_list(member)
    return serialize_item(member)


def serialize_list(members: list[Member]) -> str:
    """Serialise a List; an empty list gives "" (the field should then be omitted)."""
    if not isinstance(members, (list, tuple)):
        raise SFVError("expected a list of members")
    return ", ".join([_serialize_member(member) for member in members])


def serialize_dictionary(d: dict[str, Member]) -> str:
    """Serialise a Dictionary; a member that is a true Boolean Item is written as its bare key."""
    if not isinstance(d, dict):
        raise SFVError("expected a dict of members")
    out: list[str] = []
    for key, member in d.items():
        name = _serialize_key(key)
        if isinstance(member, Item) and member.value is True:
            out.append(name + serialize_params(member.params))
        else:
            out.append(f"{name}={_serialize_member(member)}")
    return ", ".join(out)
