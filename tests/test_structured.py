"""Structured fields (gateway/signing/structured.py over http-sf): the HTTP WG corpus, the limits,
and properties.

The corpus is kept in tests/vectors/structured-field-tests (BSD-3-Clause, see its LICENSE.md and
SOURCE), so these tests always run. Results are compared in a type-tagged form so that a Token
never passes for a String, nor ``True`` for ``1``, nor a Decimal ``1.0`` for the Integer ``1``.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import http_sf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.signing.structured import (
    MAX_LENGTH,
    MAX_MEMBERS,
    BareItem,
    DisplayString,
    InnerList,
    Item,
    Member,
    Params,
    StructuredFieldError,
    Token,
    parse_dictionary,
    parse_item,
    parse_list,
    serialize_bare_item,
    serialize_dictionary,
    serialize_inner_list,
    serialize_item,
    serialize_list,
)
from tests.helpers import VECTORS

CORPUS = VECTORS / "structured-field-tests"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

PARSERS: dict[str, Callable[[str], Any]] = {
    "item": parse_item,
    "list": parse_list,
    "dictionary": parse_dictionary,
}
# The corpus checks conformance, so it runs with RFC 9651 §3's minimums (1024 members, 256 inner
# list items and parameters); the gateway's defaults are tighter on purpose (see the limit tests).
RFC_MINIMUMS = {"max_length": 32 * 1024, "max_members": 1024}
CONFORMANCE: dict[str, Callable[[str], Any]] = {k: partial(p, **RFC_MINIMUMS) for k, p in PARSERS.items()}
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
            return EPOCH + datetime.timedelta(seconds=int(value))
        if kind == "displaystring":
            return DisplayString(value)
        raise AssertionError(f"unknown corpus type {kind!r}")
    assert isinstance(v, (bool, int, Decimal, str))
    return v


def params_from_json(pairs: list[Any]) -> Params:
    return {key: bare_from_json(value) for key, value in pairs}


def member_from_json(m: list[Any]) -> Member:
    value, params = m
    if isinstance(value, list):
        items = tuple(Item(bare_from_json(b), params_from_json(p)) for b, p in value)
        return InnerList(items, params_from_json(params))
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
    if isinstance(v, Decimal):
        return ("decimal", v)
    if isinstance(v, DisplayString):
        return ("displaystring", str(v))
    if isinstance(v, Token):
        return ("token", str(v))
    if isinstance(v, str):
        return ("string", v)
    if isinstance(v, bytes):
        return ("binary", v)
    if isinstance(v, datetime.datetime):
        return ("date", (v - EPOCH) // datetime.timedelta(seconds=1))
    raise AssertionError(f"not a bare item: {v!r}")


def tag_params(params: Params) -> list[tuple[str, tuple[str, object]]]:
    assert isinstance(params, dict)
    return [(key, tag_bare(value)) for key, value in params.items()]


def tag_member(m: object) -> tuple[object, ...]:
    if isinstance(m, InnerList):
        assert isinstance(m.items, tuple)
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
    assert folder.is_dir(), f"the corpus belongs in the repository: {folder}"
    cases = []
    for path in sorted(folder.glob("*.json")):
        # Decimals exactly as written: a binary float would round 0.1 before we compare.
        for case in json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal):
            cases.append(pytest.param(case, id=f"{path.stem}: {case['name']}"))
    assert len(cases) > 100 if not sub else cases
    return cases


def test_corpus_travels_with_its_licence() -> None:
    assert (CORPUS / "LICENSE.md").read_text().startswith("Copyright (c) 2018- IETF Trust")
    assert "httpwg/structured-field-tests" in (CORPUS / "SOURCE").read_text()


@pytest.mark.parametrize("case", corpus_cases(""))
def test_corpus_parse(case: dict[str, Any]) -> None:
    htype = case["header_type"]
    # Several field lines combine into one value, joined by a comma and a space (RFC 9110 §5.3).
    text = ", ".join(case["raw"])
    if case.get("must_fail"):
        with pytest.raises(StructuredFieldError):
            CONFORMANCE[htype](text)
        return
    try:
        result = CONFORMANCE[htype](text)
    except StructuredFieldError:
        # can_fail: missing base64 padding, non-zero pad bits, dates beyond datetime's years
        assert case.get("can_fail"), case["name"]
        return
    assert tag(htype, result) == tag(htype, from_json(htype, case["expected"]))
    canonical = ", ".join(case.get("canonical", case["raw"]))
    assert SERIALIZERS[htype](result) == canonical
    assert SERIALIZERS[htype](from_json(htype, case["expected"])) == canonical


@pytest.mark.parametrize("case", corpus_cases("serialisation-tests"))
def test_corpus_serialise(case: dict[str, Any]) -> None:
    htype = case["header_type"]
    value = from_json(htype, case["expected"])
    if case.get("must_fail"):
        with pytest.raises(StructuredFieldError):
            SERIALIZERS[htype](value)
        return
    out = SERIALIZERS[htype](value)
    assert out == ", ".join(case["canonical"])
    assert SERIALIZERS[htype](CONFORMANCE[htype](out)) == out


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
        "a=:YQ===:",
        "a=:Y:",
        "a=:YWFhY=:",
        'a=%"%C3%A9"',
        "a=@1.5",
        "A=1",
        "a=1;",
        "a=()x",
        "a=\udcff",  # a byte aiohttp could not decode, as surrogateescape hands it over
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(StructuredFieldError):
        parse_dictionary(text)


@pytest.mark.parametrize(("text", "value"), [("a=:YQ=:", b"a"), ("a=:QUJD=:", b"ABC"), ("a=:YQ:", b"a")])
def test_byte_sequence_padding_follows_rfc9651(text: str, value: bytes) -> None:
    # RFC 9651 §4.2.7: parsers SHOULD NOT fail on padding; the bytes are what is compared.
    assert parse_dictionary(text) == {"a": Item(value, {})}


def test_trailing_ows_follows_the_rfc_algorithms() -> None:
    # The List and Dictionary algorithms discard OWS after each member; the Item algorithm and
    # the top level discard only SP (RFC 9651 §4.2, §4.2.1, §4.2.2).
    assert parse_dictionary("a=1\t") == {"a": Item(1, {})}
    assert parse_list("1 \t") == [Item(1, {})]
    with pytest.raises(StructuredFieldError):
        parse_item("1\t")
    with pytest.raises(StructuredFieldError):
        parse_list("\t1")


def test_rejects_non_str_input() -> None:
    for parser in PARSERS.values():
        with pytest.raises(StructuredFieldError):
            parser(b"a=1")  # type: ignore[arg-type]


def test_errors_name_an_offset_never_the_input() -> None:
    secret_looking = "zz" + "q" * 40
    with pytest.raises(StructuredFieldError) as err:
        parse_dictionary(f"{secret_looking}=1, b=(")
    assert "offset" in str(err.value) and secret_looking not in str(err.value)


def test_rfc9651_types_parse_and_serialise_unchanged() -> None:
    text = 'a=@1700000000, b=%"caf%c3%a9", c=:AQ==:;d=@-5'
    parsed = parse_dictionary(text)
    assert parsed["a"] == Item(EPOCH + datetime.timedelta(seconds=1_700_000_000), {})
    assert parsed["b"] == Item(DisplayString("caf\u00e9"), {})
    assert serialize_dictionary(parsed) == text


# -- limits, checked before (length) and as (member counts) the value is read ---------------


def test_overlong_field_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = http_sf.parse

    def spy(value: bytes, *args: Any, **kw: Any) -> Any:
        calls.append(value)
        return real(value, *args, **kw)

    monkeypatch.setattr(http_sf, "parse", spy)
    fits = "a=" + "1" * 15 + ", b=" + '"' + "x" * (MAX_LENGTH - 23) + '"'
    assert len(fits) == MAX_LENGTH
    parse_dictionary(fits)
    with pytest.raises(StructuredFieldError, match="longer than"):
        parse_dictionary(fits + " ")
    with pytest.raises(StructuredFieldError, match="non-ASCII"):
        parse_dictionary("a=1, b=\u20ac")
    assert len(calls) == 1  # neither refusal reached the parser
    with pytest.raises(StructuredFieldError, match="longer than"):
        parse_list("1", max_length=0)


LARGE = {c["name"]: c for c in json.loads((CORPUS / "large-generated.json").read_text())}


@pytest.mark.parametrize(
    "name", ["large dictionary", "large list", "large parameterised list", "large params", "large byte sequence"]
)
def test_gateway_defaults_refuse_what_only_the_rfc_minimums_admit(name: str) -> None:
    case = LARGE[name]
    text = ", ".join(case["raw"])
    CONFORMANCE[case["header_type"]](text)
    with pytest.raises(StructuredFieldError):
        PARSERS[case["header_type"]](text)


def test_member_counts_are_bounded() -> None:
    many = ", ".join(f"k{i}=1" for i in range(MAX_MEMBERS))
    assert len(parse_dictionary(many)) == MAX_MEMBERS
    with pytest.raises(StructuredFieldError, match="dictionary members"):
        parse_dictionary(many + ", last=1")
    with pytest.raises(StructuredFieldError, match="list members"):
        parse_list(", ".join(["1"] * (MAX_MEMBERS + 1)))
    with pytest.raises(StructuredFieldError, match="inner list items"):
        parse_dictionary("a=(" + " ".join(["1"] * (MAX_MEMBERS + 1)) + ")")
    with pytest.raises(StructuredFieldError, match="parameters"):
        parse_item("1" + "".join(f";p{i}" for i in range(MAX_MEMBERS + 1)))
    with pytest.raises(StructuredFieldError, match="parameters"):
        parse_dictionary("a=()" + "".join(f";p{i}" for i in range(MAX_MEMBERS + 1)))
    assert len(parse_dictionary("a=1, b=2, c=3", max_members=3)) == 3
    with pytest.raises(StructuredFieldError):
        parse_dictionary("a=1, b=2, c=3", max_members=2)


# -- serialising ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        [1],
        {},
        object(),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1e12"),
        10**15,
        datetime.datetime(2020, 1, 1),  # naive: no time zone, no Date
        Token("1a"),
        Token(""),
        "caf\u00e9",
        "a\nb",
        DisplayString("\ud800"),
    ],
)
def test_serialise_rejects(value: Any) -> None:
    with pytest.raises(StructuredFieldError):
        serialize_bare_item(value)


def test_serialise_rejects_bad_structures() -> None:
    bad: list[Callable[[], str]] = [
        lambda: serialize_item(Item(1, {"A": 1})),
        lambda: serialize_item(Item(1, {1: 1})),  # type: ignore[dict-item]
        lambda: serialize_item("a"),  # type: ignore[arg-type]
        lambda: serialize_inner_list(InnerList((1,), {})),  # type: ignore[arg-type]
        lambda: serialize_list([1]),  # type: ignore[list-item]
        lambda: serialize_dictionary({"a": 1}),  # type: ignore[dict-item]
        lambda: serialize_dictionary({"": Item(1, {})}),
    ]
    for call in bad:
        with pytest.raises(StructuredFieldError):
            call()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "?1"),
        (False, "?0"),
        (1, "1"),
        (0, "0"),
        (Decimal("-0.0"), "0.0"),
        (Decimal("-0.0001"), "0.0"),
        (Decimal("1.0"), "1.0"),
        (Decimal("2.5"), "2.5"),
        (Decimal("1.0005"), "1.0"),
        (Decimal("1.0015"), "1.002"),
        (Decimal("999999999999.9994"), "999999999999.999"),
        (Decimal("123456789012.1"), "123456789012.1"),
        (Decimal("1e-9"), "0.0"),
        (EPOCH - datetime.timedelta(seconds=5), "@-5"),
        (Token("*a:b/c"), "*a:b/c"),
        ('a"b\\c', '"a\\"b\\\\c"'),
        (DisplayString('\u00fc%"'), '%"%c3%bc%25%22"'),
        (b"", "::"),
    ],
)
def test_serialise_bare_item(value: BareItem, text: str) -> None:
    assert serialize_bare_item(value) == text


def test_empty_list_and_dictionary_serialise_as_empty_text() -> None:
    assert serialize_list([]) == serialize_dictionary({}) == ""
    assert parse_dictionary("") == {} and parse_list("") == []


def test_decimal_rounding_overflow_fails() -> None:
    with pytest.raises(StructuredFieldError):
        serialize_bare_item(Decimal("999999999999.9996"))


# ---------------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------------

SFV_CHARS = st.sampled_from(list(" \t,;=()\"\\:?@%-.*/+_~!#$&'^`|0123456789abcdefxyzAZ"))
ANY_TEXT = st.text(st.one_of(SFV_CHARS, st.characters()), max_size=80)


@settings(max_examples=500, deadline=None, database=None)
@given(ANY_TEXT)
def test_parsers_only_raise_structured_field_error(text: str) -> None:
    for htype, parser in PARSERS.items():
        try:
            parsed = parser(text)
        except StructuredFieldError:
            continue
        # Whatever parses serialises, and that serialisation is a fixed point.
        out = SERIALIZERS[htype](parsed)
        assert tag(htype, parser(out)) == tag(htype, parsed)
        assert SERIALIZERS[htype](parser(out)) == out


@settings(max_examples=500, deadline=None, database=None)
@given(ANY_TEXT)
def test_adapter_agrees_with_http_sf(text: str) -> None:
    """The adapter adds limits and types, never a verdict of its own on short ASCII input."""
    for htype, parser in PARSERS.items():
        try:
            ours: object = tag(htype, parser(text))
        except StructuredFieldError:
            ours = None
        try:
            raw = http_sf.parse(text.encode("ascii"), tltype=htype) if text.isascii() else None
            theirs: object = None if raw is None else tag(htype, _from_http_sf(htype, raw))
        except http_sf.StructuredFieldError:
            theirs = None
        assert ours == theirs


def _from_http_sf(htype: str, raw: Any) -> Any:
    def member(m: Any) -> Member:
        value, params = m
        if isinstance(value, list):
            return InnerList(tuple(Item(v, p) for v, p in value), params)
        return Item(value, params)

    if htype == "item":
        return member(raw)
    if htype == "list":
        return [member(m) for m in raw]
    return {k: member(m) for k, m in raw.items()}


KEYS = st.from_regex(r"\A[a-z*][a-z0-9_\-.*]{0,6}\Z")
BARE: st.SearchStrategy[BareItem] = st.one_of(
    st.booleans(),
    st.integers(-999_999_999_999_999, 999_999_999_999_999),
    st.integers(-999_999_999_999_999, 999_999_999_999_999).map(lambda k: Decimal(k) / 1000),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.from_regex(r"\A[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]{0,8}\Z").map(Token),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=8).map(DisplayString),
    st.binary(max_size=12),
    st.integers(-(10**10), 10**11).map(lambda s: EPOCH + datetime.timedelta(seconds=s)),
)
PARAMS = st.dictionaries(KEYS, BARE, max_size=3)
ITEMS = st.builds(Item, BARE, PARAMS)
MEMBERS: st.SearchStrategy[Member] = st.one_of(
    ITEMS, st.builds(InnerList, st.lists(ITEMS, max_size=3).map(tuple), PARAMS)
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(MEMBERS, min_size=1, max_size=4), st.dictionaries(KEYS, MEMBERS, min_size=1, max_size=4), ITEMS)
def test_serialise_then_parse_round_trips(members: list[Member], dictionary: dict[str, Member], item: Item) -> None:
    assert tag("list", parse_list(serialize_list(members))) == tag("list", members)
    assert tag("dictionary", parse_dictionary(serialize_dictionary(dictionary))) == tag("dictionary", dictionary)
    assert tag("item", parse_item(serialize_item(item))) == tag("item", item)


def test_corpus_path_is_inside_the_repository() -> None:
    assert Path(__file__).resolve().parent in CORPUS.resolve().parents
