"""RFC 9421 signing and verification (gateway/signing/rfc9421.py), pure level.

The B.2.5 values live in tests/vectors/rfc9421-b25.json and drive the code; signatures are
exchanged with the independent http-message-signatures package in both directions.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.errors import Reason, VerificationError
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring
from gateway.signing import rfc9421
from gateway.signing.digest import content_digest, verify_content_digest
from gateway.signing.rfc9421 import Component, RequestView, VerifyPolicy
from tests.helpers import (
    REQUIRED,
    b2_keyring,
    b2_view,
    flat_keyring,
    lib_message,
    lib_signer,
    lib_verifier,
    load_vector,
    random_secret,
)

B2 = load_vector("rfc9421-b25.json")


# -- Appendix B.2.5 ---------------------------------------------------------------------------


def test_b25_signature_reproduces() -> None:
    v = B2["b25"]
    signed = rfc9421.sign(
        b2_view(B2),
        b2_keyring(B2).signing_key,
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
    view = b2_view(B2)
    headers = CIMultiDict(view.headers)
    headers["Signature-Input"] = v["signature_input"]
    headers["Signature"] = v["signature"]
    view = RequestView(view.method, view.authority, view.path, view.query, headers, view.scheme)
    policy = VerifyPolicy(required=frozenset(Component.parse(c).identifier for c in v["covered"]))
    verified = rfc9421.verify(view, B2["request"]["body"].encode(), b2_keyring(B2), policy, v["params"]["created"])
    assert verified.key_id == "test-shared-secret"
    assert verified.label == "sig-b25"


def test_b25_flipped_signature_bit_fails() -> None:
    v = B2["b25"]
    mac = bytearray(base64.b64decode(v["signature"].split(":")[1]))
    mac[0] ^= 1
    view = b2_view(B2)
    headers = CIMultiDict(view.headers)
    headers["Signature-Input"] = v["signature_input"]
    headers["Signature"] = f"sig-b25=:{base64.b64encode(bytes(mac)).decode()}:"
    view = RequestView(view.method, view.authority, view.path, view.query, headers, view.scheme)
    policy = VerifyPolicy(required=frozenset())
    with pytest.raises(VerificationError) as err:
        rfc9421.verify(view, b"", b2_keyring(B2), policy, v["params"]["created"])
    assert err.value.reason is Reason.SIGNATURE_MISMATCH


# -- RFC 9530 digests of the B.2 body ---------------------------------------------------------


@pytest.mark.parametrize("case", ["body_18_bytes", "body_19_bytes_with_trailing_LF"])
@pytest.mark.parametrize("alg", ["sha-256", "sha-512"])
def test_content_digest_matches_rfc9530(case: str, alg: str) -> None:
    body = B2["request"]["body"].encode() + (b"\n" if "LF" in case else b"")
    assert content_digest(body, alg) == B2["content_digest"][case][alg]


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
        # RFC 9421 builds on RFC 8941: RFC 9651's Date and Display String are not its Integer or String
        (f";created={NOW}", f";created=@{NOW}", Reason.MALFORMED_SIGNATURE),
        (';keyid="key-v1"', ';keyid=%"key-v1"', Reason.MALFORMED_SIGNATURE),
        (';keyid="key-v1"', ";keyid=key-v1", Reason.MALFORMED_SIGNATURE),  # a Token
        ('"@method"', '%"@method"', Reason.MALFORMED_SIGNATURE),
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


def test_oversized_signature_headers_are_malformed() -> None:
    s = Signed(KEYS, "key-v1")
    # well formed, but past the structured-field length bound: refused before any MAC is computed
    s.headers["Signature-Input"] += ';tag="' + "x" * 17_000 + '"'
    assert reason_of(s) is Reason.MALFORMED_SIGNATURE
    s = Signed(KEYS, "key-v1")
    s.headers.add("Signature", "pad=:" + "A" * 17_000 + ":")
    assert reason_of(s) is Reason.MALFORMED_SIGNATURE


# -- the scheme seam: replay expiry, and the Verifier shape ------------------------------------


def test_replay_until_rests_on_created_and_both_windows_not_on_now() -> None:
    s = Signed(KEYS, "key-v1")
    policy = VerifyPolicy(window_past=300, window_future=30)
    for now in (NOW - 30, NOW, NOW + 299):
        assert rfc9421.verify(s.view(), s.body, s.keyring(), policy, now).replay_until == NOW + 330
    wide = VerifyPolicy(window_past=600, window_future=120)
    assert rfc9421.verify(s.view(), s.body, s.keyring(), wide, NOW).replay_until == NOW + 720


def test_verifier_checks_headers_before_the_body_and_raises_never_returns_false() -> None:
    verifier = rfc9421.SCHEME.verifier(POLICY)
    assert isinstance(verifier, rfc9421.Rfc9421Verifier)
    s = Signed(KEYS, "key-v2")
    pending = verifier.check_headers(s.view(), s.keyring(), NOW)
    verified = pending.check_body(s.body)
    assert (verified.key_id, verified.label) == ("key-v2", "sig1")
    assert verified == rfc9421.verify(s.view(), s.body, s.keyring(), POLICY, NOW)
    with pytest.raises(VerificationError) as err:
        pending.check_body(s.body + b"!")
    assert err.value.reason is Reason.DIGEST_MISMATCH
    # a header failure needs no body at all
    with pytest.raises(VerificationError) as err:
        verifier.check_headers(s.view(), s.keyring(), NOW + 301)
    assert err.value.reason is Reason.STALE
