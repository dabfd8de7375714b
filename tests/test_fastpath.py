"""The canonical fast paths (gateway/signing/fastpath.py) agree with the full parser, http-sf.

Agreement is checked against ``http_sf.parse`` itself, not only through our adapter, so that a
fast path cannot drift from the reference parser behind the adapter's back.
"""

from __future__ import annotations

import http_sf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Reason, VerificationError
from gateway.signing import fastpath
from gateway.signing import structured as sf
from gateway.signing.digest import content_digest, verify_content_digest
from gateway.signing.signature_base import SIGNATURE_PARAMETERS, Component

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
    fast = fastpath.fast_signature_input(text)
    if fast is None:
        return
    try:
        reference = http_sf.parse(text.encode("ascii"), tltype="dictionary")
        full = sf.parse_dictionary(text)
    except (http_sf.StructuredFieldError, sf.StructuredFieldError, UnicodeEncodeError):
        raise AssertionError(f"fast path accepted what the full parser refuses: {text!r}") from None
    assert isinstance(reference, dict)
    assert list(fast) == list(full) == list(reference)
    (label,) = fast
    member = full[label]
    assert isinstance(member, sf.InnerList)
    parsed = fast[label]
    assert [c.identifier for c in parsed.components] == [Component.from_item(i).identifier for i in member.items]
    assert parsed.fields == {i.value for i in member.items if not str(i.value).startswith("@")}
    assert _typed(parsed.params) == _typed(member.params) == _typed(reference[label][1])  # type: ignore[index]
    assert parsed.serialized == sf.serialize_inner_list(member) == http_sf.ser(reference)[len(label) + 1 :]


@settings(max_examples=800, deadline=None)
@given(
    label=st.from_regex(r"[a-z][a-z0-9_\-.*]{0,8}", fullmatch=True),
    names=st.lists(_NAMES, max_size=6, unique=True),
    params=st.dictionaries(_PARAM_KEYS, _VALUES, max_size=6),
)
def test_fast_path_agrees_with_the_full_parser_on_canonical_input(
    label: str, names: list[str], params: dict[str, object]
) -> None:
    member = sf.InnerList(tuple(sf.Item(n, {}) for n in names), dict(params))  # type: ignore[arg-type]
    text = sf.serialize_dictionary({label: member})
    _assert_paths_agree(text)
    if all(
        key in SIGNATURE_PARAMETERS
        and ((isinstance(v, str) and not set(v) & set('"\\;')) or (type(v) is int and v >= 0))
        for key, v in params.items()
    ):
        assert fastpath.fast_signature_input(text) is not None  # the usual, escape-free input: the fast path takes it


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
        'sig1=("@method");created=@1',  # an RFC 9651 Date
        'sig1=("@method");keyid=%"k"',  # an RFC 9651 Display String
    ):
        assert fastpath.fast_signature_input(text) is None, text


def test_empty_body_digest_shortcut_is_the_real_digest() -> None:
    import base64 as b64
    import hashlib as hl

    assert content_digest(b"") == f"sha-256=:{b64.b64encode(hl.sha256(b'').digest()).decode()}:"
    verify_content_digest(content_digest(b""), b"")


_B64 = st.text(st.sampled_from(list("QUJDRE+/=ab01")), max_size=14)


def _reference_signature(text: str) -> dict[str, sf.Member] | None:
    try:
        raw = http_sf.parse(text.encode("ascii"), tltype="dictionary")
    except http_sf.StructuredFieldError:
        return None
    assert isinstance(raw, dict)
    return {k: sf.Item(v[0], v[1]) for k, v in raw.items()}  # type: ignore[index]


@settings(max_examples=1500, deadline=None)
@given(value=_B64, label=st.sampled_from(["sig1", "a", "Sig"]))
def test_signature_fast_path_agrees_with_the_full_parser(value: str, label: str) -> None:
    text = f"{label}=:{value}:"
    try:
        fast: dict[str, sf.Member] | None = fastpath.parse_signature(text)
    except sf.StructuredFieldError:
        fast = None
    assert fast == _reference_signature(text)


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


def test_non_canonical_base64_takes_the_full_parser() -> None:
    assert fastpath.canonical_b64decode("QUJD=") is None and fastpath.canonical_b64decode("QUJD") == b"ABC"
    assert fastpath.canonical_b64decode("QUI") is None  # missing padding
    # http-sf decides (RFC 9651 §4.2.7: do not fail on padding): the bytes, not the text, count
    assert fastpath.parse_signature("sig1=:QUJD=:") == {"sig1": sf.Item(b"ABC", {})}
    with pytest.raises(sf.StructuredFieldError):
        fastpath.parse_signature("sig1=:QUJD===:")
    with pytest.raises(VerificationError) as err:
        verify_content_digest("sha-256=:QUJD=:", b"x")
    assert err.value.reason is Reason.DIGEST_MISMATCH
    with pytest.raises(VerificationError) as err:
        verify_content_digest("sha-256=:Q:", b"x")
    assert err.value.reason is Reason.MALFORMED_DIGEST


# -- the head cache is a bounded LRU ------------------------------------------------------------

LEGIT = 'sig1=("@method" "@authority" "@path" "@query" "content-digest")'


def test_junk_heads_cannot_keep_a_real_sender_out_of_the_cache() -> None:
    maxsize = fastpath._HEAD_CACHE.maxsize
    for i in range(maxsize + 10):  # canonical, cacheable junk: each a new head
        assert fastpath.fast_head(f'junk{i}=("@method")') is not None
    assert len(fastpath._HEAD_CACHE) == maxsize  # bounded
    assert 'junk0=("@method")' not in fastpath._HEAD_CACHE  # the oldest went first
    parsed = fastpath.fast_head(LEGIT)
    assert parsed is not None
    assert fastpath._HEAD_CACHE.get(LEGIT) == parsed  # cached again, not locked out until restart
    assert fastpath.fast_head(LEGIT) is parsed  # and served from the cache


def test_heads_with_invalid_components_are_not_cached() -> None:
    assert fastpath.fast_head('sig1=("@bogus")') is None
    assert 'sig1=("@bogus")' not in fastpath._HEAD_CACHE


def test_the_common_case_never_reaches_the_full_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """What our sign route and http-message-signatures send verifies without http-sf."""
    from gateway.signing import rfc9421
    from tests.helpers import flat_keyring, lib_signed_webhook, random_secret

    keys = {"key-v1": random_secret()}
    view, body = lib_signed_webhook("key-v1", keys["key-v1"].encode(), 1_700_000_000)

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("the full parser was reached")

    monkeypatch.setattr(http_sf, "parse", refuse)
    verified = rfc9421.verify(view, body, flat_keyring(**keys), rfc9421.VerifyPolicy(), 1_700_000_000)
    assert verified.key_id == "key-v1"
    with pytest.raises(AssertionError, match="full parser"):
        sf.parse_dictionary("a=1")  # the guard is live
