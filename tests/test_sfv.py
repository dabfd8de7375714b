"""Structured Field Values: the HTTP WG corpus (parsing and serialisation) plus properties.

The corpus stays in ``shared/vectors/structured-field-tests`` beside the repository; these tests
skip, saying so, when that folder is absent. Results are compared in a type-tagged form so that a
Token never passes for a String, nor ``True`` for ``1``, nor ``1.0`` for ``1``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.signing.sfv import (
    BareItem,
    Date,
    DisplayString,
    InnerList,
    Item,
    Member,
    Params,
    SFVError,
    Token,
    parse_dictionary,
    parse_item,
    parse_list,
    serialize_bare_item,
    serialize_dictionary,
    serialize_inner_list,
    serialize_item,
    serialize_list,
    serialize_params,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "structured-field-tests"

PARSERS: dict[str, Callable[[str], Any]] = {
    "item": parse_item,
    "list": parse_list,
    "dictionary": parse_dictionary,
}
SERIALIZERS: dict[str, Callable[[Any], str]] = {
    "item": serialize_item,
    "list": serialize_list,
    "dictionary": serialize_dictionary,
}


# ---------------------------------------------------------------------------------------------
# Corpus JSON form <-> our types, and a type-tagged normal form for strict comparison.
# ---------------------------------------------------------------------------------------------


def bare_from_json(v: Any) -> BareItem:
    if isinstance(v, dict):
        kind, value = v["__type"], v["value"]
        if kind == "token":
            return Token(value)
        if kind == "binary":
            return base64.b32decode(value)
        if kind == "date":
            return Date(value)
        if kind == "displaystring":
            return DisplayString(value)
        raise AssertionError(f"unknown corpus type {kind!r}")
    assert isinstance(v, (bool, int, float, str))
    return v


def params_from_json(pairs: list[Any]) -> Params:
    return {key: bare_from_json(value) for key, value in pairs}


def member_from_json(m: list[Any]) -> Member:
    value, params = m
    if isinstance(value, list):
        return InnerList([Item(bare_from_json(b), params_from_json(p)) for b, p in value], params_from_json(params))
    return Item(bare_from_json(value), params_from_json(params))


def from_json(header_type: str, expected: Any) -> Any:
    if header_type == "item":
        return member_from_json(expected)
    if header_type == "list":
        return [member_from_json(m) for m in expected]
    return {key: member_from_json(m) for key, m in expected}


def tag_bare(v: object) -> tuple[str, object]:
    if isinstance(v, bool):
        return ("boolean", v)
    if isinstance(v, int):
        return ("integer", v)
    if isinstance(v, float):
        return ("decimal", v)
    if isinstance(v, DisplayString):
        return ("displaystring", str(v))
    if isinstance(v, Token):
        return ("token", str(v))
    if isinstance(v, str):
        return ("string", v)
    if isinstance(v, bytes):
        return ("binary", v)
    if isinstance(v, Date):
        assert type(v.value) is int
        return ("date", v.value)
    raise AssertionError(f"not a bare item: {v!r}")


def tag_params(params: Params) -> list[tuple[str, tuple[str, object]]]:
    assert isinstance(params, dict)
    return [(key, tag_bare(value)) for key, value in params.items()]


def tag_member(m: object) -> tuple[object, ...]:
    if isinstance(m, InnerList):
        return ("inner", [tag_member(i) for i in m.items], tag_params(m.params))
    assert isinstance(m, Item)
    return ("item", tag_bare(m.value), tag_params(m.params))


def tag(header_type: str, value: Any) -> object:
    if header_type == "item":
        return tag_member(value)
    if header_type == "list":
        assert isinstance(value, list)
        return [tag_member(m) for m in value]
    assert isinstance(value, dict)
    return [(key, tag_member(m)) for key, m in value.items()]


# ---------------------------------------------------------------------------------------------
# The corpus.
# ---------------------------------------------------------------------------------------------


def corpus_cases(sub: str) -> list[Any]:
    folder = CORPUS / sub if sub else CORPUS
    if not folder.is_dir():
        return [pytest.param(None, id="corpus-absent")]
    cases = []
    for path in sorted(folder.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            cases.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    return cases


def need(case: dict[str, Any] | None) -> dict[str, Any]:
    if case is None:
        pytest.skip(f"structured-field-tests corpus not found at {CORPUS} (shared/vectors is absent)")
    return case


@pytest.mark.parametrize("case", corpus_cases(""))
def test_corpus_parse(case: dict[str, Any] | None) -> None:
    case = need(case)
    htype = case["header_type"]
    # Several field lines combine into one value, joined by a comma and a space (RFC 9110 §5.3).
    text = ", ".join(case["raw"])
    if case.get("must_fail"):
        with pytest.raises(SFVError):
            PARSERS[htype](text)
        return
    # can_fail cases (missing base64 padding, non-zero pad bits, 15-digit dates, a String split
    # over two lines) are all accepted by this parser, per RFC 8941 §4.2.7's SHOULD NOT fail.
    result = PARSERS[htype](text)
    assert tag(htype, result) == tag(htype, from_json(htype, case["expected"]))
    canonical = ", ".join(case.get("canonical", case["raw"]))
    assert SERIALIZERS[htype](result) == canonical
    assert SERIALIZERS[htype](from_json(htype, case["expected"])) == canonical


@pytest.mark.parametrize("case", corpus_cases("serialisation-tests"))
def test_corpus_serialise(case: dict[str, Any] | None) -> None:
    case = need(case)
    htype = case["header_type"]
    value = from_json(htype, case["expected"])
    if case.get("must_fail"):
        with pytest.raises(SFVError):
            SERIALIZERS[htype](value)
        return
    out = SERIALIZERS[htype](value)
    assert out == ", ".join(case["canonical"])
    assert SERIALIZERS[htype](PARSERS[htype](out)) == out


# ---------------------------------------------------------------------------------------------
# What the gateway relies on, stated directly.
# ---------------------------------------------------------------------------------------------

SIGNATURE_INPUT = (
    'sig1=("@method" "@authority" "@path" "@query" "content-digest" "content-type")'
    ';created=1618884473;keyid="test-shared-secret";alg="hmac-sha256";nonce="abc123XYZ";tag="hmac-gateway"'
)


def test_signature_input_shape_and_round_trip() -> None:
    parsed = parse_dictionary(SIGNATURE_INPUT)
    sig1 = parsed["sig1"]
    assert isinstance(sig1, InnerList)
    assert [i.value for i in sig1.items] == [
        "@method",
        "@authority",
        "@path",
        "@query",
        "content-digest",
        "content-type",
    ]
    assert all(type(i.value) is str and i.params == {} for i in sig1.items)
    assert list(sig1.params) == ["created", "keyid", "alg", "nonce", "tag"]
    assert type(sig1.params["created"]) is int
    assert serialize_dictionary(parsed) == SIGNATURE_INPUT


def test_signature_and_digest_byte_sequences() -> None:
    sig = parse_dictionary("sig1=:dGVzdA==:")["sig1"]
    assert sig == Item(b"test", {})
    digest = parse_dictionary("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:YQ==:")
    assert list(digest) == ["sha-256", "sha-512"]
    assert serialize_item(Item(b"\xff\x00", {"a": Token("b")})) == ":/wA=:;a=b"


@pytest.mark.parametrize(
    "text",
    [
        'a="caf\u00e9"',
        "a=1\u00a0",
        "a=\u0661",
        "a=1\r\n",
        "a=1\x00",
        "\ta=1",
        "a=1,\u3000b=2",
        "a=1_000",
        "a= 1",
        'a=("x"\t"y")',
        "a=:YQ=:",
        "a=:YQ===:",
        "a=:Y:",
        "a=:YWFhY=:",
        'a=%"%C3%A9"',
        "a=@1.5",
        "A=1",
        "a=1;",
        "a=()x",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(SFVError):
        parse_dictionary(text)


def test_trailing_ows_follows_the_rfc_algorithms() -> None:
    # The List and Dictionary algorithms discard OWS after each member; the Item algorithm and
    # the top level discard only SP (RFC 8941 §4.2, §4.2.1, §4.2.2).
    assert parse_dictionary("a=1\t") == {"a": Item(1, {})}
    assert parse_list("1 \t") == [Item(1, {})]
    with pytest.raises(SFVError):
        parse_item("1\t")
    with pytest.raises(SFVError):
        parse_list("\t1")


def test_rejects_non_str_input() -> None:
    for parser in PARSERS.values():
        with pytest.raises(SFVError):
            parser(b"a=1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        None,
        [1],
        {},
        object(),
        math.nan,
        math.inf,
        -math.inf,
        1e12,
        10**15,
        Date(True),
        Date(1.5),  # type: ignore[arg-type]
        Token("1a"),
        Token(""),
        "caf\u00e9",
        "a\nb",
        DisplayString("\ud800"),
        Decimal("1.5"),
    ],
)
def test_serialise_rejects(value: Any) -> None:
    with pytest.raises(SFVError):
        serialize_bare_item(value)


def test_serialise_rejects_bad_structures() -> None:
    bad: list[Callable[[], str]] = [
        lambda: serialize_params({"A": 1}),
        lambda: serialize_params({1: 1}),  # type: ignore[dict-item]
        lambda: serialize_params([("a", 1)]),  # type: ignore[arg-type]
        lambda: serialize_item("a"),  # type: ignore[arg-type]
        lambda: serialize_inner_list(InnerList([1], {})),  # type: ignore[list-item]
        lambda: serialize_list([1]),  # type: ignore[list-item]
        lambda: serialize_dictionary({"a": 1}),  # type: ignore[dict-item]
        lambda: serialize_dictionary({"": Item(1, {})}),
    ]
    for call in bad:
        with pytest.raises(SFVError):
            call()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "?1"),
        (False, "?0"),
        (1, "1"),
        (0, "0"),
        (-0.0, "0.0"),
        (-0.0001, "0.0"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        (0.1 + 0.2, "0.3"),
        (1.0005, "1.0"),
        (1.0015, "1.002"),
        (999999999999.9994, "999999999999.999"),
        (123456789012.1, "123456789012.1"),
        (1e-9, "0.0"),
        (Date(-5), "@-5"),
        (Token("*a:b/c"), "*a:b/c"),
        ('a"b\\c', '"a\\"b\\\\c"'),
        (DisplayString('\u00fc%"'), '%"%c3%bc%25%22"'),
        (b"", "::"),
    ],
)
def test_serialise_bare_item(value: BareItem, text: str) -> None:
    assert serialize_bare_item(value) == text


def test_decimal_rounding_overflow_fails() -> None:
    with pytest.raises(SFVError):
        serialize_bare_item(999999999999.9996)


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------

SFV_CHARS = st.sampled_from(list(" \t,;=()\"\\:?@%-.*/+_~!#$&'^`|0123456789abcdefxyzAZ"))
ANY_TEXT = st.text(st.one_of(SFV_CHARS, st.characters()), max_size=80)


@settings(max_examples=500, deadline=None, database=None)
@given(ANY_TEXT)
def test_parsers_only_raise_sfverror(text: str) -> None:
    for htype, parser in PARSERS.items():
        try:
            parsed = parser(text)
        except SFVError:
            continue
        # Whatever parses serialises, and that serialisation is a fixed point.
        out = SERIALIZERS[htype](parsed)
        assert tag(htype, parser(out)) == tag(htype, parsed)
        assert SERIALIZERS[htype](parser(out)) == out


KEYS = st.from_regex(r"\A[a-z*][a-z0-9_\-.*]{0,6}\Z")
BARE: st.SearchStrategy[BareItem] = st.one_of(
    st.booleans(),
    st.integers(-999_999_999_999_999, 999_999_999_999_999),
    st.integers(-999_999_999_999_999, 999_999_999_999_999).map(lambda k: float(Decimal(k) / 1000)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.from_regex(r"\A[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]{0,8}\Z").map(Token),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=8).map(DisplayString),
    st.binary(max_size=12),
    st.integers(-999_999_999_999_999, 999_999_999_999_999).map(Date),
)
PARAMS = st.dictionaries(KEYS, BARE, max_size=3)
ITEMS = st.builds(Item, BARE, PARAMS)
MEMBERS: st.SearchStrategy[Member] = st.one_of(ITEMS, st.builds(InnerList, st.lists(ITEMS, max_size=3), PARAMS))


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(MEMBERS, max_size=4), st.dictionaries(KEYS, MEMBERS, max_size=4), ITEMS)
def test_serialise_then_parse_round_trips(members: list[Member], dictionary: dict[str, Member], item: Item) -> None:
    assert tag("list", parse_list(serialize_list(members))) == tag("list", members)
    assert tag("dictionary", parse_dictionary(serialize_dictionary(dictionary))) == tag("dictionary", dictionary)
    assert tag("item", parse_item(serialize_item(item))) == tag("item", item)
