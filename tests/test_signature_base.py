"""RFC 9421 component values and the signature base (gateway/signing/signature_base.py).

The B.2.5 values live in tests/vectors/rfc9421-b25.json and drive the code; component values
are cross-checked against the independent http-message-signatures resolver.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from http_message_signatures import HTTPSignatureComponentResolver
from http_sf.compat import Item as LibItem
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.signing import signature_base as sb
from gateway.signing import structured as sf
from gateway.signing.signature_base import Component, ComponentError, RequestView
from tests.helpers import b2_view, lib_message, load_vector

B2 = load_vector("rfc9421-b25.json")


def test_b25_signature_base_is_byte_exact() -> None:
    v = B2["b25"]
    components = sb.parse_components(v["covered"])
    params = sb.signature_params(
        components, created=v["params"]["created"], key_id=v["params"]["keyid"], nonce=None, tag=None, include_alg=False
    )
    base = sb.signature_base(b2_view(B2), components, params)
    assert base.decode().split("\n") == v["signature_base_lines"]
    assert not base.endswith(b"\n")
    assert len(base) == 200
    assert hashlib.sha256(base).hexdigest() == "82faed1b67e492cfc8fe50fee1b6fdbdcf9f4d6384af8282339dcad5e44310e7"


# -- component values, cross-checked against http-message-signatures ----------------------------

QUERY_TARGET = "/path?param=value&foo=bar&baz=batman&qux="
ENCODED_TARGET = (
    "/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"
)


def view_for(target: str, headers: Any = None, method: str = "POST") -> RequestView:
    path, sep, query = target.partition("?")
    return RequestView(
        method=method,
        authority="www.example.com",
        path=path,
        query=query if sep else None,
        headers=CIMultiDict(headers or {}),
        scheme="https",
    )


def lib_value(target: str, component: str, headers: Any = None) -> str:
    message = lib_message("POST", f"https://www.example.com{target}", headers or {})
    item = sf.parse_item(component) if component.startswith('"') else sf.Item(component, {})
    lib_item = LibItem(item.value)
    lib_item.params.update(item.params)
    value = HTTPSignatureComponentResolver(message).resolve(lib_item)
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize(
    ("target", "component", "expected"),
    [
        (QUERY_TARGET, "@method", "POST"),
        (QUERY_TARGET, "@authority", "www.example.com"),
        (QUERY_TARGET, "@scheme", "https"),
        (QUERY_TARGET, "@path", "/path"),
        (QUERY_TARGET, "@query", "?param=value&foo=bar&baz=batman&qux="),
        (QUERY_TARGET, "@request-target", QUERY_TARGET),
        (QUERY_TARGET, "@target-uri", "https://www.example.com" + QUERY_TARGET),
        (QUERY_TARGET, '"@query-param";name="baz"', "batman"),
        (QUERY_TARGET, '"@query-param";name="qux"', ""),
        ("/path?queryString", "@query", "?queryString"),
        ("/path", "@query", "?"),
        ("/", "@path", "/"),
        (ENCODED_TARGET, '"@query-param";name="var"', "this%20is%20a%20big%0Amultiline%20value"),
        (ENCODED_TARGET, '"@query-param";name="bar"', "with%20plus%20whitespace"),
        (ENCODED_TARGET, '"@query-param";name="fa%C3%A7ade%22%3A%20"', "something"),
    ],
)
def test_derived_components_match_rfc_and_library(target: str, component: str, expected: str) -> None:
    ours = sb.component_value(view_for(target), Component.parse(component))
    assert ours == expected
    assert ours == lib_value(target, component)


FIELD_HEADERS = {
    "Example-Dict": " a=1,    b=2;x=1;y=2,   c=(a   b   c)",
    "Content-Digest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
    "Cache-Control": "   max-age=60  ",
    "Priority": 'u=1, d=@1700000000, n=%"caf%c3%a9"',  # RFC 9651 Date and Display String
}


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("cache-control", "max-age=60"),
        ("content-digest", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
        ('"content-digest";sf', "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
        ('"example-dict";key="a"', "1"),
        ('"example-dict";key="b"', "2;x=1;y=2"),
        ('"example-dict";key="c"', "(a b c)"),
        ('"cache-control";bs', ":bWF4LWFnZT02MA==:"),
        # Covered fields are read as RFC 9651: its Date and Display String re-serialise unchanged
        ('"priority";sf', 'u=1, d=@1700000000, n=%"caf%c3%a9"'),
        ('"priority";key="d"', "@1700000000"),
        ('"priority";key="n"', '%"caf%c3%a9"'),
    ],
)
def test_field_components_match_rfc_and_library(component: str, expected: str) -> None:
    view = view_for("/", FIELD_HEADERS)
    ours = sb.component_value(view, Component.parse(component))
    assert ours == expected
    assert ours == lib_value("/", component, FIELD_HEADERS)


def test_repeated_field_lines_are_joined_with_comma_space() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("X-Multi", " one "), ("X-Multi", "two")])
    view = RequestView("GET", "h", "/", None, headers)
    assert sb.component_value(view, Component.parse("x-multi")) == "one, two"


def test_only_http_whitespace_is_trimmed() -> None:
    # str.strip() would also drop a trailing NBSP or form feed: the upstream would get bytes
    # the signature never covered.
    for value in ("abc\u00a0", "\x0cabc"):
        view = RequestView("GET", "h", "/", None, CIMultiDict({"X-A": value}))
        assert sb.component_value(view, Component.parse("x-a")) == value
    view = RequestView("GET", "h", "/", None, CIMultiDict({"X-A": "\t abc \t"}))
    assert sb.component_value(view, Component.parse("x-a")) == "abc"


@pytest.mark.parametrize(
    "component",
    ["Content-Type", "@unknown", "@status", '"@method";req', '"x";tr', "connection", '"a";bs;sf', '"@query-param"'],
)
def test_invalid_component_identifiers_are_refused(component: str) -> None:
    with pytest.raises(ComponentError):
        Component.parse(component)


@pytest.mark.parametrize("component", ['"x";key=%"a"', '"@query-param";name=%"a"', '"x";sf=@1', '"x";bs=@1'])
def test_rfc9651_types_in_component_parameters_are_refused(component: str) -> None:
    with pytest.raises(ComponentError):
        Component.parse(component)


def test_duplicate_components_are_refused() -> None:
    with pytest.raises(ComponentError):
        sb.parse_components(["@method", "@method"])


def test_query_param_occurring_twice_is_refused() -> None:
    with pytest.raises(ComponentError):
        sb.component_value(view_for("/p?a=1&a=2"), Component.parse('"@query-param";name="a"'))


def test_structured_field_errors_become_component_errors() -> None:
    view = view_for("/", {"Example-Dict": "a=(", "Cache-Control": "max-age=60"})
    for component in ('"example-dict";key="a"', '"content-digest";sf', '"cache-control";sf'):
        with pytest.raises(ComponentError):
            sb.component_value(view, Component.parse(component))


# -- "bs": the wire bytes, whatever they are (issue 9 item 4) ----------------------------------


def aiohttp_text(wire: bytes) -> str:
    """A header value as aiohttp hands it over (both its parsers decode this way)."""
    return wire.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"\xe2\x82\xac", ":4oKs:"),  # the euro sign in UTF-8: the example
        (b"caf\xe9", ":Y2Fm6Q==:"),  # Latin-1, not valid UTF-8
        (b"\xff\xfe", "://4=:"),
        (b" max-age=60 ", ":bWF4LWFnZT02MA==:"),
    ],
)
def test_bs_encodes_the_wire_bytes(wire: bytes, expected: str) -> None:
    view = RequestView("GET", "h", "/", None, CIMultiDict({"X-A": aiohttp_text(wire)}))
    assert sb.component_value(view, Component.parse('"x-a";bs')) == expected


def test_bs_with_text_no_wire_produced_is_a_component_error() -> None:
    view = RequestView("GET", "h", "/", None, CIMultiDict({"X-A": "\ud800"}))  # not a surrogateescape byte
    with pytest.raises(ComponentError):
        sb.component_value(view, Component.parse('"x-a";bs'))


def test_non_ascii_without_bs_is_a_component_error() -> None:
    view = RequestView("GET", "h", "/", None, CIMultiDict({"X-A": aiohttp_text(b"\xe2\x82\xac")}))
    component = Component.parse("x-a")
    with pytest.raises(ComponentError):
        sb.signature_base(view, [component], "()")


FIELD_BYTES = st.binary(min_size=0, max_size=40).filter(lambda b: not set(b) & set(b"\r\n\0"))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(FIELD_BYTES, min_size=1, max_size=3))
def test_bs_agrees_with_the_library_on_any_bytes(lines: list[bytes]) -> None:
    """http-message-signatures takes a field's bytes as Latin-1 text; we take aiohttp's text.
    Both must give the same value for the same bytes on the wire, line by line."""
    ours = CIMultiDict([("X-A", aiohttp_text(line)) for line in lines])
    view = RequestView("GET", "www.example.com", "/", None, ours)
    theirs = CIMultiDict([("X-A", line.strip(b" \t").decode("latin-1")) for line in lines])
    assert sb.component_value(view, Component.parse('"x-a";bs')) == lib_value("/", '"x-a";bs', theirs)


# -- the component cache is a bounded LRU -------------------------------------------------------


def test_junk_component_names_cannot_keep_real_ones_out_of_the_cache() -> None:
    maxsize = sb._PLAIN_COMPONENTS.maxsize
    for i in range(maxsize + 10):
        sb.plain_component(f"x-junk-{i}")
    assert len(sb._PLAIN_COMPONENTS) == maxsize  # bounded
    assert sb.plain_component_cached("x-junk-0") is None  # the oldest junk went first
    for name in ("@method", "content-digest"):
        sb.plain_component(name)
        assert sb.plain_component_cached(name) is not None  # cached again, not locked out
    assert sb.plain_component("@method") is sb.plain_component("@method")
