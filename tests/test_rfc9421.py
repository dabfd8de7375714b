"""RFC 9421 signature base, signing and verification (pure level).

The B.2.5 values live in tests/vectors/rfc9421-b25.json and drive the code; component values
are cross-checked against the independent http-message-signatures resolver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from http_message_signatures import HTTPSignatureComponentResolver
from http_sf.compat import Item as LibItem
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import Reason, VerificationError
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring
from gateway.signing import rfc9421, sfv
from gateway.signing.digest import content_digest, verify_content_digest
from gateway.signing.rfc9421 import Component, ComponentError, RequestView, VerifyPolicy
from tests.helpers import REQUIRED, flat_keyring, lib_message, lib_signer, lib_verifier, load_vector, random_secret

B2 = load_vector("rfc9421-b25.json")


def b2_view() -> RequestView:
    req = B2["request"]
    headers: CIMultiDict[str] = CIMultiDict(req["headers"])
    path, _, query = req["target"].partition("?")
    return RequestView(
        method=req["method"],
        authority=headers["Host"],
        path=path,
        query=query,
        headers=headers,
        scheme=req["scheme"],
    )


def b2_keyring() -> Keyring:
    return parse_keyring("rfc", json.dumps({B2["key_id"]: B2["key_base64"]}), encoding="base64")


# -- Appendix B.2.5 ---------------------------------------------------------------------------


def test_b25_signature_base_is_byte_exact() -> None:
    v = B2["b25"]
    components = rfc9421.parse_components(v["covered"])
    params = rfc9421.signature_params(
        components, created=v["params"]["created"], key_id=v["params"]["keyid"], nonce=None, tag=None, include_alg=False
    )
    base = rfc9421.signature_base(b2_view(), components, params)
    assert base.decode().split("\n") == v["signature_base_lines"]
    assert not base.endswith(b"\n")
    assert len(base) == 200
    assert hashlib.sha256(base).hexdigest() == "82faed1b67e492cfc8fe50fee1b6fdbdcf9f4d6384af8282339dcad5e44310e7"


def test_b25_signature_reproduces() -> None:
    v = B2["b25"]
    signed = rfc9421.sign(
        b2_view(),
        b2_keyring().signing_key,
        rfc9421.parse_components(v["covered"]),
        created=v["params"]["created"],
        nonce=None,
        tag=None,
        label=v["label"],
        include_alg=False,
    )
    assert signed.signature_input == v["signature_input"]
    assert signed.signature == v["signature"]


def test_b25_vector_verifies() -> None:
    v = B2["b25"]
    view = b2_view()
    headers = CIMultiDict(view.headers)
    headers["Signature-Input"] = v["signature_input"]
    headers["Signature"] = v["signature"]
    view = RequestView(view.method, view.authority, view.path, view.query, headers, view.scheme)
    policy = VerifyPolicy(required=frozenset(Component.parse(c).identifier for c in v["covered"]))
    verified = rfc9421.verify(view, B2["request"]["body"].encode(), b2_keyring(), policy, v["params"]["created"])
    assert verified.key_id == "test-shared-secret"
    assert verified.label == "sig-b25"


def test_b25_flipped_signature_bit_fails() -> None:
    v = B2["b25"]
    mac = bytearray(base64.b64decode(v["signature"].split(":")[1]))
    mac[0] ^= 1
    view = b2_view()
    headers = CIMultiDict(view.headers)
    headers["Signature-Input"] = v["signature_input"]
    headers["Signature"] = f"sig-b25=:{base64.b64encode(bytes(mac)).decode()}:"
    view = RequestView(view.method, view.authority, view.path, view.query, headers, view.scheme)
    policy = VerifyPolicy(required=frozenset())
    with pytest.raises(VerificationError) as err:
        rfc9421.verify(view, b"", b2_keyring(), policy, v["params"]["created"])
    assert err.value.reason is Reason.SIGNATURE_MISMATCH


# -- RFC 9530 digests of the B.2 body ---------------------------------------------------------


@pytest.mark.parametrize("case", ["body_18_bytes", "body_19_bytes_with_trailing_LF"])
@pytest.mark.parametrize("alg", ["sha-256", "sha-512"])
def test_content_digest_matches_rfc9530(case: str, alg: str) -> None:
    body = B2["request"]["body"].encode() + (b"\n" if "LF" in case else b"")
    assert content_digest(body, alg) == B2["content_digest"][case][alg]


# -- component values, cross-checked against http-message-signatures ----------------------------

QUERY_TARGET = "/path?param=value&foo=bar&baz=batman&qux="
ENCODED_TARGET = (
    "/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"
)


def view_for(target: str, headers: dict[str, str] | None = None, method: str = "POST") -> RequestView:
    path, sep, query = target.partition("?")
    return RequestView(
        method=method,
        authority="www.example.com",
        path=path,
        query=query if sep else None,
        headers=CIMultiDict(headers or {}),
        scheme="https",
    )


def lib_value(target: str, component: str, headers: dict[str, str] | None = None) -> str:
    message = lib_message("POST", f"https://www.example.com{target}", headers or {})
    item = sfv.parse_item(component) if component.startswith('"') else sfv.Item(component, {})
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
    ours = rfc9421.component_value(view_for(target), Component.parse(component))
    assert ours == expected
    assert ours == lib_value(target, component)


FIELD_HEADERS = {
    "Example-Dict": " a=1,    b=2;x=1;y=2,   c=(a   b   c)",
    "Content-Digest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
    "Cache-Control": "   max-age=60  ",
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
    ],
)
def test_field_components_match_rfc_and_library(component: str, expected: str) -> None:
    view = view_for("/", FIELD_HEADERS)
    ours = rfc9421.component_value(view, Component.parse(component))
    assert ours == expected
    assert ours == lib_value("/", component, FIELD_HEADERS)


def test_repeated_field_lines_are_joined_with_comma_space() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("X-Multi", " one "), ("X-Multi", "two")])
    view = RequestView("GET", "h", "/", None, headers)
    assert rfc9421.component_value(view, Component.parse("x-multi")) == "one, two"


@pytest.mark.parametrize(
    "component",
    ["Content-Type", "@unknown", "@status", '"@method";req', '"x";tr', "connection", '"a";bs;sf', '"@query-param"'],
)
def test_invalid_component_identifiers_are_refused(component: str) -> None:
    with pytest.raises(ComponentError):
        Component.parse(component)


def test_duplicate_components_are_refused() -> None:
    with pytest.raises(ComponentError):
        rfc9421.parse_components(["@method", "@method"])


def test_query_param_occurring_twice_is_refused() -> None:
    with pytest.raises(ComponentError):
        rfc9421.component_value(view_for("/p?a=1&a=2"), Component.parse('"@query-param";name="a"'))


# -- verification: one test per reason ------------------------------------------------------

NOW = 1_700_000_000


class Signed:
    """A request signed by http-message-signatures (the other side), ready to be tampered with."""

    def __init__(self, keys: dict[str, str], key_id: str, **sign_args: Any) -> None:
        self.keys = keys
        self.body = sign_args.pop("body", b'{"event": "paid"}')
        self.method = sign_args.pop("method", "POST")
        self.target = sign_args.pop("target", "/hooks/pay?id=7")
        self.headers: CIMultiDict[str] = CIMultiDict({"Host": "gw.example", "Content-Type": "application/json"})
        self.headers.update(sign_args.pop("headers", {}))
        message = lib_message(self.method, f"http://gw.example{self.target}", self.headers)
        sign_args.setdefault("created", _dt(NOW))
        sign_args.setdefault("nonce", "n-" + random_secret()[:16])
        sign_args.setdefault("covered_component_ids", REQUIRED)
        lib_signer({k: v.encode() for k, v in keys.items()}).sign(
            message, key_id=key_id, body=self.body, label="sig1", **sign_args
        )

    def view(self, method: str | None = None, target: str | None = None) -> RequestView:
        target = target or self.target
        path, sep, query = target.partition("?")
        return RequestView(method or self.method, "gw.example", path, query if sep else None, self.headers)

    def keyring(self) -> Keyring:
        return flat_keyring("ring", **self.keys)


def _dt(ts: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


KEYS = {"key-v1": random_secret(), "key-v2": random_secret()}
POLICY = VerifyPolicy()


def reason_of(signed: Signed, *, view: RequestView | None = None, body: bytes | None = None, **kw: Any) -> Reason:
    policy = kw.pop("policy", POLICY)
    now = kw.pop("now", NOW)
    keyring = kw.pop("keyring", signed.keyring())
    with pytest.raises(VerificationError) as err:
        rfc9421.verify(view or signed.view(), signed.body if body is None else body, keyring, policy, now)
    return err.value.reason


def test_library_signature_verifies_with_any_active_key() -> None:
    for key_id in KEYS:
        s = Signed(KEYS, key_id)
        verified = rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, NOW)
        assert verified.key_id == key_id
        assert verified.replay_token.startswith("n-")


def test_our_signature_verifies_with_library() -> None:
    key = flat_keyring(**KEYS).signing_key
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "text/plain"})
    body = b"hello"
    headers["Content-Digest"] = content_digest(body)
    view = RequestView("PUT", "api.example:8443", "/v1/x", "a=1&b=%20", headers, "https")
    comps = rfc9421.parse_components([*REQUIRED, "content-type"])
    signed = rfc9421.sign(view, key, comps, created=NOW, nonce="abc", tag="hmac-gateway")
    headers["Signature-Input"] = signed.signature_input
    headers["Signature"] = signed.signature
    message = lib_message("PUT", "https://api.example:8443/v1/x?a=1&b=%20", headers)
    verifier = lib_verifier({key.id: key.material})
    verifier.max_clock_skew = __import__("datetime").timedelta(days=10_000)
    results = verifier.verify(message, max_age=None, require_components=[*REQUIRED, "content-type"], body=body)
    assert results[0].parameters["keyid"] == "key-v2"
    assert results[0].parameters["tag"] == "hmac-gateway"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.headers.popall("Signature"), Reason.MISSING_SIGNATURE),
        (lambda s: s.headers.popall("Signature-Input"), Reason.MISSING_SIGNATURE),
        (lambda s: s.headers.__setitem__("Signature", "sig1=not base64"), Reason.MALFORMED_SIGNATURE),
        (lambda s: s.headers.__setitem__("Signature-Input", 'sig1=("@method"'), Reason.MALFORMED_SIGNATURE),
        (lambda s: s.headers.__setitem__("Signature", "other=:AAAA:"), Reason.MALFORMED_SIGNATURE),
        (lambda s: s.headers.__setitem__("Signature", 'sig1=("a")'), Reason.MALFORMED_SIGNATURE),
        (lambda s: s.headers.__setitem__("Signature-Input", "sig1=:AAAA:"), Reason.MALFORMED_SIGNATURE),
        (lambda s: s.headers.__setitem__("Content-Digest", "sha-256=:AAAA:"), Reason.DIGEST_MISMATCH),
        (lambda s: s.headers.__setitem__("Content-Digest", "garbage((("), Reason.MALFORMED_DIGEST),
        (lambda s: s.headers.__setitem__("Content-Digest", "md5=:AAAA:"), Reason.MALFORMED_DIGEST),
        (lambda s: s.headers.popall("Content-Digest"), Reason.MISSING_DIGEST),
        (lambda s: s.headers.__setitem__("Content-Type", "text/evil"), None),  # not covered: still verifies
    ],
)
def test_header_tampering(mutate: Any, reason: Reason | None) -> None:
    s = Signed(KEYS, "key-v1")
    mutate(s)
    if reason is None:
        assert rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, NOW).key_id == "key-v1"
    else:
        assert reason_of(s) is reason


def test_tampered_body_method_path_query() -> None:
    s = Signed(KEYS, "key-v1")
    assert reason_of(s, body=s.body + b" ") is Reason.DIGEST_MISMATCH
    assert reason_of(s, view=s.view(method="PUT")) is Reason.SIGNATURE_MISMATCH
    assert reason_of(s, view=s.view(target="/hooks/refund?id=7")) is Reason.SIGNATURE_MISMATCH
    assert reason_of(s, view=s.view(target="/hooks/pay?id=8")) is Reason.SIGNATURE_MISMATCH
    assert reason_of(s, view=s.view(target="/hooks/pay")) is Reason.SIGNATURE_MISMATCH


def _rewrite_input(s: Signed, old: str, new: str) -> None:
    value = s.headers["Signature-Input"]
    assert old in value
    s.headers["Signature-Input"] = value.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ('"@method"', '"@METHOD"', Reason.MALFORMED_SIGNATURE),  # upper-case component name
        ('"@method"', '"@path"', Reason.MALFORMED_SIGNATURE),  # duplicate component
        ('"@method"', "@method", Reason.MALFORMED_SIGNATURE),  # a token, not a string
        ('"@method"', '"@bogus"', Reason.MALFORMED_SIGNATURE),  # unknown derived component
        (';keyid="key-v1"', ';keyid="key-v1";foo="bar"', Reason.MALFORMED_SIGNATURE),  # unknown parameter
        (f";created={NOW}", f';created="{NOW}"', Reason.MALFORMED_SIGNATURE),  # non-integer created
        (f";created={NOW}", f";created={NOW}.5", Reason.MALFORMED_SIGNATURE),
        (f";created={NOW}", "", Reason.MISSING_PARAMETER),
        (';alg="hmac-sha256"', ';alg="rsa-pss-sha512"', Reason.UNSUPPORTED_ALGORITHM),
        (';keyid="key-v1"', ';keyid="key-v9"', Reason.UNKNOWN_KEY),
        (';keyid="key-v1"', ";keyid=1", Reason.MALFORMED_SIGNATURE),
        (' "content-digest"', "", Reason.INSUFFICIENT_COVERAGE),
    ],
)
def test_signature_input_edge_cases(old: str, new: str, reason: Reason) -> None:
    s = Signed(KEYS, "key-v1")
    _rewrite_input(s, old, new)
    assert reason_of(s) is reason


def test_freshness_window_is_asymmetric_and_inclusive() -> None:
    s = Signed(KEYS, "key-v1")
    for now in (NOW - 30, NOW, NOW + 300):
        rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, now)
    assert reason_of(s, now=NOW + 301) is Reason.STALE
    assert reason_of(s, now=NOW - 31) is Reason.FUTURE


def test_expires_parameter_is_enforced() -> None:
    s = Signed(KEYS, "key-v1", expires=_dt(NOW + 10))
    rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, NOW + 9)
    assert reason_of(s, now=NOW + 10) is Reason.STALE


def test_route_requirements_nonce_alg_tag() -> None:
    s = Signed(KEYS, "key-v1", nonce=None, include_alg=False, tag="partner-a")
    assert reason_of(s, policy=VerifyPolicy(require_nonce=True)) is Reason.MISSING_PARAMETER
    assert reason_of(s, policy=VerifyPolicy(require_alg=True)) is Reason.MISSING_PARAMETER
    assert reason_of(s, policy=VerifyPolicy(expected_tag="partner-b")) is Reason.TAG_MISMATCH
    verified = rfc9421.verify(s.view(), s.body, s.keyring(), VerifyPolicy(expected_tag="partner-a"), NOW)
    # with no nonce, the signature itself is what the replay store remembers
    assert verified.replay_token == s.headers["Signature"].split("=", 1)[1].strip(":")


def test_missing_keyid_tries_every_active_key() -> None:
    s = Signed(KEYS, "key-v1")
    comps = rfc9421.parse_components(REQUIRED)
    params = "(" + " ".join(c.identifier for c in comps) + f');created={NOW};nonce="keyless"'
    # key-v1 is not the signing key: only trying *every* active key finds it
    mac = hmac.digest(KEYS["key-v1"].encode(), rfc9421.signature_base(s.view(), comps, params), "sha256")
    s.headers["Signature-Input"] = f"sig1={params}"
    s.headers["Signature"] = f"sig1=:{base64.b64encode(mac).decode()}:"
    assert rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, NOW).key_id == "key-v1"
    other = flat_keyring("ring", other=random_secret())
    assert reason_of(s, keyring=other) is Reason.SIGNATURE_MISMATCH


def test_expired_retiring_key_is_refused_by_the_verifier_alone() -> None:
    doc = {
        "hmac_gateway_keyring": 1,
        "keys": [
            {"id": "key-v1", "secret": KEYS["key-v1"], "state": "retiring", "expires_at": "2023-11-14T22:13:30Z"},
            {"id": "key-v2", "secret": KEYS["key-v2"], "state": "primary"},
        ],
    }
    ring = parse_keyring("ring", json.dumps(doc))
    s = Signed(KEYS, "key-v1")
    expires = 1_700_000_010  # 2023-11-14T22:13:30Z
    rfc9421.verify(s.view(), s.body, ring, POLICY, expires - 1)
    assert reason_of(s, keyring=ring, now=expires) is Reason.EXPIRED_KEY


def test_several_signatures_one_valid_is_accepted() -> None:
    s = Signed(KEYS, "key-v1")
    s.headers["Signature-Input"] = 'junk=("@method");created=1;keyid="key-v1", ' + s.headers["Signature-Input"]
    s.headers["Signature"] = "junk=:AAAA:, " + s.headers["Signature"]
    assert rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, NOW).label == "sig1"


def test_too_many_signatures_are_refused() -> None:
    s = Signed(KEYS, "key-v1")
    extra = ", ".join(f'l{i}=("@method");created=1' for i in range(9))
    s.headers["Signature-Input"] = extra + ", " + s.headers["Signature-Input"]
    assert reason_of(s) is Reason.MALFORMED_SIGNATURE


def test_signature_failure_carries_base_hash_never_the_key() -> None:
    s = Signed(KEYS, "key-v1")
    with pytest.raises(rfc9421.SignatureFailure) as err:
        rfc9421.verify(s.view(method="DELETE"), s.body, s.keyring(), POLICY, NOW)
    assert len(err.value.base_sha256) == 64
    assert err.value.signature_base is not None and b'"@method": DELETE' in err.value.signature_base
    for secret in KEYS.values():
        assert secret not in str(err.value) and secret not in repr(err.value)


def test_every_supported_digest_entry_must_match() -> None:
    body = B2["request"]["body"].encode()
    good256 = B2["content_digest"]["body_18_bytes"]["sha-256"]
    good512 = B2["content_digest"]["body_18_bytes"]["sha-512"]
    wrong512 = B2["content_digest"]["body_19_bytes_with_trailing_LF"]["sha-512"]
    verify_content_digest(f"{good256}, {good512}", body)
    verify_content_digest(f"unknown=:AAAA:, {good512}", body)  # unknown algorithms are ignored
    for value in (f"{good256}, {wrong512}", f"{wrong512}, {good256}"):
        with pytest.raises(VerificationError) as err:
            verify_content_digest(value, body)
        assert err.value.reason is Reason.DIGEST_MISMATCH


# -- the canonical fast path agrees with the full RFC 8941 parser -----------------------------


_NAMES = st.sampled_from(["@method", "@authority", "@path", "@query", "content-digest", "content-type", "date", "x-a"])
_PARAM_KEYS = st.sampled_from(["created", "expires", "keyid", "alg", "nonce", "tag", "x"])
_VALUES = st.one_of(
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.just(True),
)


def _typed(params: dict[str, object]) -> dict[str, tuple[type, object]]:
    return {k: (type(v), v) for k, v in params.items()}


def _assert_paths_agree(text: str) -> None:
    fast = rfc9421._fast_signature_input(text)
    if fast is None:
        return
    try:
        full = sfv.parse_dictionary(text)
    except sfv.SFVError:
        raise AssertionError(f"fast path accepted what the full parser refuses: {text!r}") from None
    assert list(fast) == list(full)
    (label,) = fast
    member = full[label]
    assert isinstance(member, sfv.InnerList)
    parsed = fast[label]
    assert isinstance(parsed, rfc9421._FastInput)
    assert [c.identifier for c in parsed.components] == [Component.from_item(i).identifier for i in member.items]
    assert _typed(parsed.params) == _typed(member.params)
    assert parsed.serialized == sfv.serialize_inner_list(member)


@settings(max_examples=800, deadline=None)
@given(
    label=st.from_regex(r"[a-z][a-z0-9_\-.*]{0,8}", fullmatch=True),
    names=st.lists(_NAMES, max_size=6, unique=True),
    params=st.dictionaries(_PARAM_KEYS, _VALUES, max_size=6),
)
def test_fast_path_agrees_with_the_full_parser_on_canonical_input(
    label: str, names: list[str], params: dict[str, object]
) -> None:
    member = sfv.InnerList([sfv.Item(n, {}) for n in names], dict(params))  # type: ignore[arg-type]
    text = sfv.serialize_dictionary({label: member})
    _assert_paths_agree(text)
    if all(
        key in rfc9421.SIGNATURE_PARAMETERS
        and ((isinstance(v, str) and not set(v) & set('"\\;')) or (type(v) is int and v >= 0))
        for key, v in params.items()
    ):
        assert rfc9421._fast_signature_input(text) is not None  # the usual, escape-free input: the fast path takes it


@settings(max_examples=1500, deadline=None)
@given(text=st.text(st.sampled_from(list('sig1=()"@methodcrea;tkyi-0123456789 ,:\\?*')), max_size=80))
def test_fast_path_never_accepts_what_it_would_read_differently(text: str) -> None:
    _assert_paths_agree(text)


def test_non_canonical_inputs_fall_back_to_the_full_parser() -> None:
    for text in (
        'sig1=("@method"  "@path");created=1',  # two spaces
        'sig1=("@method");created=01',  # leading zero
        'sig1=("@method");created=1;created=2',  # duplicate parameter
        'sig1=("@method");alg=hmac-sha256',  # token value
        'sig1=("@method";req);created=1',  # component parameter
        'a=("@method"), b=("@path")',  # two signatures
        'sig1=("@methodZ Z@path");created=1',  # a space inside one name is not two names
    ):
        assert rfc9421._fast_signature_input(text) is None, text


def test_empty_body_digest_shortcut_is_the_real_digest() -> None:
    import base64 as b64
    import hashlib as hl

    assert content_digest(b"") == f"sha-256=:{b64.b64encode(hl.sha256(b'').digest()).decode()}:"
    verify_content_digest(content_digest(b""), b"")


_B64 = st.text(st.sampled_from(list("QUJDRE+/=ab01")), max_size=14)


@settings(max_examples=1500, deadline=None)
@given(value=_B64, label=st.sampled_from(["sig1", "a", "Sig"]))
def test_signature_fast_path_agrees_with_the_full_parser(value: str, label: str) -> None:
    text = f"{label}=:{value}:"
    try:
        full: dict[str, sfv.Member] | None = sfv.parse_dictionary(text)
    except sfv.SFVError:
        full = None
    try:
        fast: dict[str, sfv.Member] | None = rfc9421._fast_signature(text)
    except sfv.SFVError:
        fast = None
    assert fast == full


@settings(max_examples=1500, deadline=None)
@given(value=_B64, alg=st.sampled_from(["sha-256", "sha-512"]))
def test_digest_fast_path_gives_the_full_parsers_verdict(value: str, alg: str) -> None:
    def verdict(field: str) -> str:
        try:
            verify_content_digest(field, b"body")
            return "ok"
        except VerificationError as exc:
            return exc.reason.value

    # the same entry with an unknown one after it cannot take the fast path
    assert verdict(f"{alg}=:{value}:") == verdict(f"{alg}=:{value}:, x-unknown=:AAAA:")


def test_extra_base64_padding_takes_the_full_parser() -> None:
    assert rfc9421.canonical_b64decode("QUJD=") is None and rfc9421.canonical_b64decode("QUJD") == b"ABC"
    with pytest.raises(sfv.SFVError):
        rfc9421._fast_signature("sig1=:QUJD=:")
    with pytest.raises(VerificationError) as err:
        verify_content_digest("sha-256=:QUJD=:", b"x")
    assert err.value.reason is Reason.MALFORMED_DIGEST
