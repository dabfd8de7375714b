"""Keyring documents -> Keyring snapshots (gateway/keys/formats.py, gateway/keys/model.py)."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import datetime
from typing import Any

import pytest

from gateway.errors import KeyringFormatError, Reason, VerificationError
from gateway.keys.formats import LIFECYCLE_MARKER, decode_material, dump_lifecycle, parse_keyring
from gateway.keys.model import MIN_KEY_BYTES, Key, Keyring, KeyState

# -- helpers -------------------------------------------------------------------------------

# Distinctive secrets, so "the secret is not in the message" cannot pass by accident.
SECRET_A = "alpha-secret-0123456789-abcdefghijklmnop"  # 40 bytes
SECRET_B = "bravo-secret-0123456789-abcdefghijklmnop"
SECRET_C = "charlie-secret-0123456789-abcdefghijklmn"
SHORT_SECRET = "tooshort-secret-31-bytes-xxxxxx"  # 31 bytes
# Decodes the same under every encoding (whsec_ is always base64): a valid neighbour for any test.
WHSEC_OK = "whsec_" + base64.b64encode(b"neighbour-key-material-0123456789").decode()
RFC9421_KEY_B64 = "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="

T_CREATED = "2026-01-01T00:00:00Z"
T_PROMOTED = "2026-01-02T00:00:00Z"
T_EXPIRES = "2026-01-03T00:00:00Z"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def flat(**keys: Any) -> str:
    return json.dumps(keys)


def lifecycle(*keys: dict[str, Any], version: Any = 1, **top: Any) -> str:
    return json.dumps({LIFECYCLE_MARKER: version, **top, "keys": list(keys)})


def entry(key_id: str, state: str, secret: str = SECRET_A, **fields: Any) -> dict[str, Any]:
    return {"id": key_id, "secret": secret, "state": state, **fields}


def three_state_document() -> str:
    return lifecycle(
        entry("old", "retiring", SECRET_A, created_at=T_CREATED, promoted_at=T_CREATED, expires_at=T_EXPIRES),
        entry("cur", "primary", SECRET_B, created_at=T_CREATED, promoted_at=T_PROMOTED),
        entry("new", "pending", SECRET_C, created_at=T_PROMOTED),
    )


def format_error(document: str, name: str = "ring", **kwargs: Any) -> KeyringFormatError:
    with pytest.raises(KeyringFormatError) as info:
        parse_keyring(name, document, **kwargs)
    return info.value


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)


# -- flat map ------------------------------------------------------------------------------


def test_flat_map_every_key_verifies_and_last_entry_signs() -> None:
    ring = parse_keyring("ring", flat(**{"key-v1": SECRET_A, "key-v2": SECRET_B}), version_id="v7")
    assert ring.format == "flat"
    assert ring.version_id == "v7"
    assert ring.signing_key_id == "key-v2"
    assert ring.signing_key.material == SECRET_B.encode()
    assert ring.signing_key.state is KeyState.PRIMARY
    assert ring.get("key-v1") is not None and ring.get("key-v1").state is not KeyState.PRIMARY  # type: ignore[union-attr]
    assert [k.id for k in ring.verifying_keys(now=4e9)] == ["key-v1", "key-v2"]
    assert ring.verifying_key("key-v1", now=4e9).material == SECRET_A.encode()


def test_flat_map_keeps_document_order_not_sorted_order() -> None:
    document = f'{{"zeta": "{SECRET_A}", "alpha": "{SECRET_B}", "mid": "{SECRET_C}"}}'
    ring = parse_keyring("ring", document)
    assert [k.id for k in ring] == ["zeta", "alpha", "mid"]
    assert ring.signing_key_id == "mid"


def test_flat_map_key_appended_by_jq_becomes_signing_key() -> None:
    before = {"key-v1": SECRET_A}
    after = {**before, "key-v2": SECRET_B}  # what `jq '. + {"key-v2": ...}'` produces
    assert parse_keyring("ring", json.dumps(before)).signing_key_id == "key-v1"
    assert parse_keyring("ring", json.dumps(after)).signing_key_id == "key-v2"


def test_flat_map_default_material_is_utf8_of_the_secret_verbatim() -> None:
    hex_secret = "ab" * 32  # `openssl rand -hex 32`: used as 64 ASCII bytes, not decoded
    unicode_secret = "é" * 16  # 32 bytes of UTF-8
    ring = parse_keyring("ring", flat(a=hex_secret, b=unicode_secret))
    assert ring.get("a").material == hex_secret.encode()  # type: ignore[union-attr]
    assert ring.get("b").material == unicode_secret.encode("utf-8")  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [12345, None, ["x" * 40], {"secret": "x" * 40}, True])
def test_flat_map_refuses_non_string_values(value: Any) -> None:
    exc = format_error(json.dumps({"good": SECRET_A, "bad-key": value}))
    assert "'bad-key'" in str(exc)
    assert "must be a string" in str(exc)


def test_flat_map_refuses_empty_object() -> None:
    assert "no keys" in str(format_error("{}"))


@pytest.mark.parametrize("document", ["[]", '"text"', "42", "null"])
def test_document_must_be_a_json_object(document: str) -> None:
    assert "expected a JSON object" in str(format_error(document))


@pytest.mark.parametrize("document", ["", "{", "{'a': 'b'}", b"\xff\xfe{}", f'{{"k": "{SECRET_A}",}}'])
def test_invalid_json_is_refused_without_quoting_the_document(document: str | bytes) -> None:
    exc = format_error(document)  # type: ignore[arg-type]
    assert "'ring'" in str(exc)
    assert "not valid JSON" in str(exc)
    assert_no_secret(exc, SECRET_A)


@pytest.mark.parametrize("key_id", ["", "has space", 'quo"te', "back\\slash", "tab\t", "ü-nicode", "k" * 129])
def test_key_ids_must_be_printable_ascii_without_quotes(key_id: str) -> None:
    exc = format_error(json.dumps({key_id: SECRET_A}))
    assert "printable ASCII" in str(exc)
    assert_no_secret(exc, SECRET_A)


def test_key_id_of_128_characters_is_accepted() -> None:
    ring = parse_keyring("ring", flat(**{"k" * 128: SECRET_A}))
    assert ring.signing_key_id == "k" * 128


# -- lifecycle document v1 -----------------------------------------------------------------


def test_lifecycle_states_timestamps_and_primary_signs_wherever_it_is() -> None:
    ring = parse_keyring("ring", three_state_document(), version_id="ver-1")
    assert ring.format == "lifecycle"
    assert ring.version_id == "ver-1"
    assert [k.id for k in ring] == ["old", "cur", "new"]
    assert ring.signing_key_id == "cur"  # the primary signs, not the last entry
    old, cur, new = ring.keys
    assert (old.state, cur.state, new.state) == (KeyState.RETIRING, KeyState.PRIMARY, KeyState.PENDING)
    assert old.expires_at == ts(T_EXPIRES)
    assert cur.created_at == ts(T_CREATED)
    assert cur.promoted_at == ts(T_PROMOTED)
    assert cur.expires_at is None
    assert new.promoted_at is None
    assert (old.material, cur.material, new.material) == (SECRET_A.encode(), SECRET_B.encode(), SECRET_C.encode())


def test_lifecycle_accepts_an_explicit_utc_offset() -> None:
    ring = parse_keyring("ring", lifecycle(entry("k", "primary", created_at="2026-01-01T02:00:00+02:00")))
    assert ring.signing_key.created_at == ts(T_CREATED)


@pytest.mark.parametrize(
    ("states", "found"),
    [(["pending", "retiring"], 0), (["primary", "primary"], 2), (["primary", "pending", "primary"], 2)],
)
def test_lifecycle_needs_exactly_one_primary(states: list[str], found: int) -> None:
    entries = [
        entry(f"k{i}", state, **({"expires_at": T_EXPIRES} if state == "retiring" else {}))
        for i, state in enumerate(states)
    ]
    exc = format_error(lifecycle(*entries))
    assert f"exactly one primary key, found {found}" in str(exc)


def test_lifecycle_retiring_key_needs_expires_at() -> None:
    exc = format_error(lifecycle(entry("cur", "primary", SECRET_B), entry("old", "retiring", SECRET_A)))
    assert "'old'" in str(exc)
    assert "expires_at" in str(exc)
    assert_no_secret(exc, SECRET_A, SECRET_B)


def test_lifecycle_primary_key_cannot_expire() -> None:
    exc = format_error(lifecycle(entry("cur", "primary", expires_at=T_EXPIRES)))
    assert "'cur'" in str(exc)
    assert "expires_at" in str(exc)


def test_lifecycle_refuses_unknown_key_fields() -> None:
    exc = format_error(lifecycle(entry("cur", "primary", expires="2026-01-01T00:00:00Z", note="x")))
    assert "'cur'" in str(exc)
    assert "unknown field(s) expires, note" in str(exc)


def test_lifecycle_refuses_unknown_top_level_fields() -> None:
    document = lifecycle(entry("cur", "primary", "ab" * 32), encodng="hex")
    with pytest.raises(KeyringFormatError, match="encodng"):
        parse_keyring("ring", document)


@pytest.mark.parametrize("version", [0, 2, "1", None, [1]])
def test_lifecycle_refuses_unsupported_versions(version: Any) -> None:
    exc = format_error(lifecycle(entry("cur", "primary"), version=version))
    assert "unsupported lifecycle format version" in str(exc)
    assert repr(version) in str(exc)


@pytest.mark.parametrize("version", [True, 1.0])
def test_lifecycle_version_must_be_the_integer_1(version: Any) -> None:
    with pytest.raises(KeyringFormatError, match="unsupported lifecycle format version"):
        parse_keyring("ring", lifecycle(entry("cur", "primary"), version=version))


def test_lifecycle_refuses_duplicate_ids() -> None:
    exc = format_error(lifecycle(entry("dup", "primary", SECRET_A), entry("dup", "pending", SECRET_B)))
    assert "key id 'dup' appears twice" in str(exc)
    assert_no_secret(exc, SECRET_A, SECRET_B)


@pytest.mark.parametrize("state", ["active", "PRIMARY", None, 1])
def test_lifecycle_refuses_unknown_states(state: Any) -> None:
    exc = format_error(lifecycle(entry("cur", state)))
    assert "'state' must be one of pending, primary, retiring" in str(exc)


@pytest.mark.parametrize("value", ["yesterday", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00", 1767225600, "T"])
def test_lifecycle_refuses_bad_timestamps(value: Any) -> None:
    exc = format_error(lifecycle(entry("cur", "primary", created_at=value)))
    assert "'created_at' is not an RFC 3339 timestamp" in str(exc)
    assert "'cur'" in str(exc)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"keys": []}, "'keys' must be a non-empty list"),
        ({"keys": {"cur": SECRET_A}}, "'keys' must be a non-empty list"),
        ({"keys": ["cur"]}, "keys[0] must be an object"),
        ({"keys": [{"secret": SECRET_A, "state": "primary"}]}, "keys[0] needs a string 'id'"),
        ({"keys": [{"id": "cur", "state": "primary"}]}, "'secret' must be a string"),
        ({"keys": [{"id": "cur", "secret": 7, "state": "primary"}]}, "'secret' must be a string"),
    ],
)
def test_lifecycle_refuses_malformed_key_lists(top: dict[str, Any], message: str) -> None:
    exc = format_error(json.dumps({LIFECYCLE_MARKER: 1, **top}))
    assert message in str(exc)
    assert_no_secret(exc, SECRET_A)


def test_a_document_without_the_marker_is_a_flat_map() -> None:
    # A flat map whose values are not strings is refused, not mistaken for a lifecycle document.
    exc = format_error(json.dumps({"keys": [entry("cur", "primary")]}))
    assert "value must be a string" in str(exc)


# -- encodings -----------------------------------------------------------------------------


def test_hex_encoding_decodes_the_secret() -> None:
    material = bytes(range(32))
    ring = parse_keyring("ring", flat(k=material.hex()), encoding="hex")
    assert ring.signing_key.material == material


def test_base64_encoding_makes_the_rfc9421_test_key_usable() -> None:
    ring = parse_keyring("ring", flat(**{"test-shared-secret": RFC9421_KEY_B64}), encoding="base64")
    assert ring.signing_key.material == base64.b64decode(RFC9421_KEY_B64)
    assert len(ring.signing_key.material) == 64


def test_whsec_prefix_is_base64_whatever_the_keyring_encoding() -> None:
    material = bytes(range(100, 132))
    secret = "whsec_" + base64.b64encode(material).decode()
    for encoding in ("raw", "hex", "base64"):
        assert parse_keyring("ring", flat(k=secret), encoding=encoding).signing_key.material == material


def test_lifecycle_document_and_key_encodings() -> None:
    hex_material = bytes(range(40))
    b64_material = bytes(range(50, 90))
    document = lifecycle(
        entry("h", "pending", hex_material.hex()),
        entry("b", "primary", base64.b64encode(b64_material).decode(), encoding="base64"),
        entry("r", "pending", SECRET_A, encoding="raw"),
        encoding="hex",
    )
    ring = parse_keyring("ring", document)
    assert ring.get("h").material == hex_material  # type: ignore[union-attr]
    assert ring.get("b").material == b64_material  # type: ignore[union-attr]
    assert ring.get("r").material == SECRET_A.encode()  # type: ignore[union-attr]
    assert ring.get("b").encoding == "base64"  # type: ignore[union-attr]


def test_config_encoding_is_the_default_for_a_lifecycle_document() -> None:
    material = bytes(range(33))
    ring = parse_keyring("ring", lifecycle(entry("k", "primary", material.hex())), encoding="hex")
    assert ring.signing_key.material == material


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (lifecycle(entry("k", "primary"), encoding="rot13"), "unknown encoding 'rot13'"),
        (lifecycle(entry("k", "primary", encoding="utf16")), "unknown encoding 'utf16'"),
    ],
)
def test_unknown_encodings_are_refused(document: str, message: str) -> None:
    assert message in str(format_error(document))


def test_unknown_config_encoding_is_refused_for_a_flat_map() -> None:
    exc = format_error(flat(k=SECRET_A), encoding="rot13")
    assert "unknown encoding 'rot13'" in str(exc)
    assert_no_secret(exc, SECRET_A)


@pytest.mark.parametrize(
    ("secret", "encoding"),
    [
        ("zz" + "ab" * 31, "hex"),
        ("a" * 65, "hex"),  # odd length
        ("not base64 at all, clearly!!" * 2, "base64"),
        ("whsec_***not-base64***" + "x" * 30, "raw"),
    ],
)
def test_undecodable_secrets_are_refused_without_quoting_them(secret: str, encoding: str) -> None:
    exc = format_error(flat(**{"key-x": secret}), encoding=encoding)
    assert "'ring'" in str(exc)
    assert "'key-x'" in str(exc)
    assert "is not valid" in str(exc)
    assert_no_secret(exc, secret)
    assert exc.__cause__ is None
    assert exc.__suppress_context__


@pytest.mark.parametrize(
    ("secret", "encoding"),
    [
        (SHORT_SECRET, "raw"),
        (bytes(range(31)).hex(), "hex"),
        (base64.b64encode(b"s" * 31).decode(), "base64"),
        ("whsec_" + base64.b64encode(b"w" * 24).decode(), "raw"),
    ],
)
def test_keys_shorter_than_32_bytes_are_refused_naming_keyring_and_key(secret: str, encoding: str) -> None:
    exc = format_error(flat(**{"ok-key": WHSEC_OK, "short-key": secret}), name="payments", encoding=encoding)
    assert "'payments'" in str(exc)
    assert "'short-key'" in str(exc)
    assert f"at least {MIN_KEY_BYTES}" in str(exc)
    assert_no_secret(exc, secret, WHSEC_OK)


def test_short_key_in_a_lifecycle_document_is_refused_without_the_secret() -> None:
    exc = format_error(lifecycle(entry("cur", "primary", SECRET_A), entry("tiny", "pending", SHORT_SECRET)))
    assert "'tiny'" in str(exc)
    assert_no_secret(exc, SHORT_SECRET, SECRET_A)


def test_exactly_32_bytes_is_enough() -> None:
    assert len(decode_material("x" * 32, "raw", keyring="r", key_id="k")) == 32
    assert decode_material(bytes(32).hex(), "hex", keyring="r", key_id="k") == bytes(32)
    with pytest.raises(KeyringFormatError):
        decode_material("x" * 31, "raw", keyring="r", key_id="k")


# -- Key and Keyring -----------------------------------------------------------------------


def test_repr_and_str_never_contain_material_or_secret() -> None:
    material = bytes(range(200, 240))
    secret = base64.b64encode(material).decode()
    document = lifecycle(
        entry("cur", "primary", secret, encoding="base64"),
        entry("old", "retiring", SECRET_A, expires_at=T_EXPIRES, encoding="raw"),
    )
    ring = parse_keyring("ring", document)
    texts = [repr(ring), str(ring), *(repr(k) for k in ring), *(str(k) for k in ring), repr(list(ring.keys))]
    for text in texts:
        for forbidden in (secret, SECRET_A, repr(material), material.hex(), repr(SECRET_A.encode())):
            assert forbidden not in text
    assert "cur" in repr(ring) and "old" in repr(ring)  # still useful for debugging
    assert str(ring.signing_key) == "Key(cur, primary)"


def test_verifying_key_unknown_id_is_unknown_key() -> None:
    ring = parse_keyring("ring", flat(k=SECRET_A))
    with pytest.raises(VerificationError) as info:
        ring.verifying_key("nope", now=0.0)
    assert info.value.reason is Reason.UNKNOWN_KEY
    assert "'nope'" in str(info.value)
    assert_no_secret(info.value, SECRET_A)


def test_retiring_key_stops_verifying_exactly_at_expires_at() -> None:
    ring = parse_keyring("ring", three_state_document())
    expires = ts(T_EXPIRES)
    assert ring.verifying_key("old", now=expires - 0.001).id == "old"
    assert [k.id for k in ring.verifying_keys(expires - 0.001)] == ["old", "cur", "new"]
    with pytest.raises(VerificationError) as info:
        ring.verifying_key("old", now=expires)
    assert info.value.reason is Reason.EXPIRED_KEY
    assert_no_secret(info.value, SECRET_A)
    assert [k.id for k in ring.verifying_keys(expires)] == ["cur", "new"]
    # the primary and the pending key never expire on their own
    assert ring.verifying_key("cur", now=expires + 10 * 365 * 86400).id == "cur"
    assert ring.verifying_key("new", now=expires + 10 * 365 * 86400).id == "new"


def test_key_verifies_at() -> None:
    key = Key(id="k", material=b"m" * 32, state=KeyState.RETIRING, expires_at=100.0)
    assert key.verifies_at(99.999)
    assert not key.verifies_at(100.0)
    assert Key(id="k", material=b"m" * 32, state=KeyState.PENDING).verifies_at(1e12)


def test_keyring_lookup() -> None:
    ring = Keyring(
        name="r",
        keys=(Key("a", b"a" * 32, KeyState.PENDING), Key("b", b"b" * 32, KeyState.PRIMARY)),
        signing_key_id="b",
        format="lifecycle",
    )
    assert ring.get("a") is ring.keys[0]
    assert ring.get("zz") is None
    assert ring.signing_key is ring.keys[1]


# -- dump_lifecycle ------------------------------------------------------------------------


def _summary(ring: Keyring) -> list[tuple[Any, ...]]:
    return [(k.id, k.material, k.state, k.created_at, k.promoted_at, k.expires_at) for k in ring]


def test_dump_lifecycle_round_trip() -> None:
    ring = parse_keyring("ring", three_state_document())
    dumped = dump_lifecycle(ring)
    data = json.loads(dumped)
    assert data[LIFECYCLE_MARKER] == 1
    assert [e["id"] for e in data["keys"]] == ["old", "cur", "new"]
    assert data["keys"][0]["expires_at"] == T_EXPIRES
    assert "expires_at" not in data["keys"][1]
    again = parse_keyring("ring", dumped)
    assert again.format == "lifecycle"
    assert again.signing_key_id == "cur"
    assert _summary(again) == _summary(ring)
    assert dump_lifecycle(again) == dumped


def test_dump_lifecycle_keeps_per_key_encoding() -> None:
    material = bytes(range(64))
    ring = parse_keyring("ring", lifecycle(entry("k", "primary", material.hex(), encoding="hex")))
    dumped = dump_lifecycle(ring)
    assert json.loads(dumped)["keys"][0]["encoding"] == "hex"
    assert parse_keyring("ring", dumped).signing_key.material == material


def test_flat_map_upgrades_to_lifecycle_with_the_same_keys() -> None:
    ring = parse_keyring("ring", flat(**{"key-v1": SECRET_A, "key-v2": SECRET_B}))
    # Older flat-map entries are retiring keys with no expiry; an upgrade (the controller's job)
    # gives them one, or the lifecycle document would be refused.
    assert ring.get("key-v1") is not None and ring.get("key-v1").state is KeyState.RETIRING  # type: ignore[union-attr]
    with pytest.raises(KeyringFormatError, match="retiring key needs 'expires_at'"):
        parse_keyring("ring", dump_lifecycle(ring))
    keys = tuple(dataclasses.replace(k, expires_at=1.9e9) if k.state is KeyState.RETIRING else k for k in ring)
    ring = dataclasses.replace(ring, keys=keys)
    upgraded = parse_keyring("ring", dump_lifecycle(ring))
    assert upgraded.format == "lifecycle"
    assert upgraded.signing_key_id == "key-v2"
    assert [(k.id, k.material) for k in upgraded] == [("key-v1", SECRET_A.encode()), ("key-v2", SECRET_B.encode())]


def test_dump_lifecycle_keeps_document_level_encoding() -> None:
    material = bytes(range(32))
    document = lifecycle(entry("k", "primary", base64.b64encode(material).decode()), encoding="base64")
    ring = parse_keyring("ring", document)
    assert ring.signing_key.material == material
    again = parse_keyring("ring", dump_lifecycle(ring))  # default (raw) encoding, as the config would give
    assert again.signing_key.material == material
