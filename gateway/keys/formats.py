"""Secret documents <-> Keyring. Pure: bytes in, snapshot out.

Two formats are read (see README "Keyring format"):

- **flat map** (today's secrets): ``{"key-v1": "old", "key-v2": "new"}``. Every key is active;
  the signing key is the *last* entry in document order (what ``jq '. + {...}'`` appends).
- **lifecycle document**, version 1: ``{"hmac_gateway_keyring": 1, "keys": [...]}`` where each
  key carries ``id``, ``secret``, ``state`` (pending|primary|retiring), ``created_at`` and, as
  they apply, ``promoted_at`` and ``expires_at`` (RFC 3339, UTC), and optionally ``encoding``.

Key material is the UTF-8 bytes of the secret string unless an encoding says otherwise
(``raw``, ``hex``, ``base64``); ``whsec_``-prefixed secrets are base64 per Standard Webhooks.
Errors name the keyring and the key id, never the secret.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from gateway.clock import from_rfc3339, to_rfc3339
from gateway.errors import KeyringFormatError
from gateway.keys.model import MIN_KEY_BYTES, Key, Keyring, KeyState

LIFECYCLE_MARKER = "hmac_gateway_keyring"
LIFECYCLE_VERSION = 1
ENCODINGS = ("raw", "hex", "base64")


def decode_material(secret: str, encoding: str, *, keyring: str, key_id: str) -> bytes:
    """Key bytes for ``secret``; raises KeyringFormatError naming the key, never the secret."""
    where = f"keyring {keyring!r}, key {key_id!r}"
    try:
        if secret.startswith("whsec_"):
            material = base64.b64decode(secret[len("whsec_") :], validate=True)
        elif encoding == "raw":
            material = secret.encode("utf-8")
        elif encoding == "hex":
            material = bytes.fromhex(secret)
        elif encoding == "base64":
            material = base64.b64decode(secret, validate=True)
        else:
            raise KeyringFormatError(f"{where}: unknown encoding {encoding!r} (use one of {', '.join(ENCODINGS)})")
    except (ValueError, binascii.Error):
        shown = "whsec_ base64" if secret.startswith("whsec_") else encoding
        raise KeyringFormatError(f"{where}: secret is not valid {shown}") from None
    if len(material) < MIN_KEY_BYTES:
        raise KeyringFormatError(
            f"{where}: key material is {len(material)} bytes; at least {MIN_KEY_BYTES} are required"
        )
    return material


def parse_keyring(name: str, document: bytes | str, *, encoding: str = "raw", version_id: str = "") -> Keyring:
    """Parse either format. ``encoding`` is the keyring's default (config)."""
    try:
        data = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise KeyringFormatError(f"keyring {name!r}: the secret is not valid JSON") from None
    if not isinstance(data, dict):
        raise KeyringFormatError(f"keyring {name!r}: expected a JSON object")
    if LIFECYCLE_MARKER in data:
        return _parse_lifecycle(name, data, encoding, version_id)
    return _parse_flat(name, data, encoding, version_id)


def _parse_flat(name: str, data: dict[str, Any], encoding: str, version_id: str) -> Keyring:
    if not data:
        raise KeyringFormatError(f"keyring {name!r}: holds no keys")
    keys = []
    for key_id, secret in data.items():
        if not isinstance(secret, str):
            raise KeyringFormatError(f"keyring {name!r}, key {key_id!r}: value must be a string")
        _check_key_id(name, key_id)
        material = decode_material(secret, encoding, keyring=name, key_id=key_id)
        keys.append(
            Key(
                id=key_id,
                material=material,
                state=KeyState.RETIRING,
                secret=secret,
                encoding=encoding if encoding != "raw" else None,
            )
        )
    # The last entry signs; every entry verifies and none expires (today's semantics, kept
    # untouched). Earlier entries are older keys, so they are retiring, not pending.
    last = keys[-1]
    keys[-1] = Key(
        id=last.id, material=last.material, state=KeyState.PRIMARY, secret=last.secret, encoding=last.encoding
    )
    return Keyring(name=name, keys=tuple(keys), signing_key_id=last.id, format="flat", version_id=version_id)


def _parse_lifecycle(name: str, data: dict[str, Any], encoding: str, version_id: str) -> Keyring:
    where = f"keyring {name!r}"
    version = data.get(LIFECYCLE_MARKER)
    if type(version) is not int or version != LIFECYCLE_VERSION:
        raise KeyringFormatError(
            f"{where}: unsupported lifecycle format version {data.get(LIFECYCLE_MARKER)!r} "
            f"(this gateway reads version {LIFECYCLE_VERSION})"
        )
    unknown = sorted(set(data) - _DOCUMENT_FIELDS)
    if unknown:
        # a typo such as "encodng" would otherwise silently change how every secret decodes
        raise KeyringFormatError(f"{where}: unknown field(s) {', '.join(unknown)}")
    doc_encoding = data.get("encoding", encoding)
    if doc_encoding not in ENCODINGS:
        raise KeyringFormatError(f"{where}: unknown encoding {doc_encoding!r}")
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyringFormatError(f"{where}: 'keys' must be a non-empty list")
    keys: list[Key] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyringFormatError(f"{where}: keys[{index}] must be an object")
        key = _parse_lifecycle_key(name, index, entry, doc_encoding)
        if key.id in seen:
            raise KeyringFormatError(f"{where}: key id {key.id!r} appears twice")
        seen.add(key.id)
        keys.append(key)
    primaries = [k for k in keys if k.state is KeyState.PRIMARY]
    if len(primaries) != 1:
        raise KeyringFormatError(f"{where}: needs exactly one primary key, found {len(primaries)}")
    return Keyring(
        name=name, keys=tuple(keys), signing_key_id=primaries[0].id, format="lifecycle", version_id=version_id
    )


_DOCUMENT_FIELDS = {LIFECYCLE_MARKER, "encoding", "keys"}
_KEY_FIELDS = {"id", "secret", "state", "encoding", "created_at", "promoted_at", "expires_at"}


def _parse_lifecycle_key(name: str, index: int, entry: dict[str, Any], doc_encoding: str) -> Key:
    key_id = entry.get("id")
    if not isinstance(key_id, str):
        raise KeyringFormatError(f"keyring {name!r}: keys[{index}] needs a string 'id'")
    _check_key_id(name, key_id)
    where = f"keyring {name!r}, key {key_id!r}"
    unknown = sorted(set(entry) - _KEY_FIELDS)
    if unknown:
        raise KeyringFormatError(f"{where}: unknown field(s) {', '.join(unknown)}")
    secret = entry.get("secret")
    if not isinstance(secret, str):
        raise KeyringFormatError(f"{where}: 'secret' must be a string")
    try:
        state = KeyState(entry.get("state"))
    except ValueError:
        raise KeyringFormatError(f"{where}: 'state' must be one of {', '.join(s.value for s in KeyState)}") from None
    key_encoding = entry.get("encoding")
    if key_encoding is not None and key_encoding not in ENCODINGS:
        raise KeyringFormatError(f"{where}: unknown encoding {key_encoding!r}")
    times: dict[str, float | None] = {}
    for field_name in ("created_at", "promoted_at", "expires_at"):
        raw = entry.get(field_name)
        try:
            times[field_name] = None if raw is None else from_rfc3339(raw)
        except (ValueError, TypeError):
            raise KeyringFormatError(f"{where}: {field_name!r} is not an RFC 3339 timestamp") from None
    if state is KeyState.RETIRING and times["expires_at"] is None:
        raise KeyringFormatError(f"{where}: a retiring key needs 'expires_at'")
    if state is KeyState.PRIMARY and times["expires_at"] is not None:
        raise KeyringFormatError(f"{where}: the primary key cannot have 'expires_at'")
    material = decode_material(secret, key_encoding or doc_encoding, keyring=name, key_id=key_id)
    return Key(
        id=key_id,
        material=material,
        state=state,
        secret=secret,
        encoding=key_encoding or (doc_encoding if doc_encoding != "raw" else None),
        created_at=times["created_at"],
        promoted_at=times["promoted_at"],
        expires_at=times["expires_at"],
    )


def _check_key_id(name: str, key_id: str) -> None:
    # Key ids travel in headers and logs: printable ASCII, no quotes or backslashes.
    if not key_id or len(key_id) > 128 or not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in key_id):
        raise KeyringFormatError(
            f"keyring {name!r}: key id {key_id[:40]!r} must be 1-128 printable ASCII characters without quotes"
        )


check_key_id = _check_key_id  # the controller checks a requested key id by the same rule


def dump_lifecycle(keyring: Keyring) -> str:
    """Serialise as a lifecycle document (the format the controller writes)."""
    entries = []
    for key in keyring.keys:
        entry: dict[str, Any] = {"id": key.id, "secret": key.secret, "state": key.state.value}
        if key.encoding:
            entry["encoding"] = key.encoding
        for field_name in ("created_at", "promoted_at", "expires_at"):
            value = getattr(key, field_name)
            if value is not None:
                entry[field_name] = to_rfc3339(value)
        entries.append(entry)
    return json.dumps({LIFECYCLE_MARKER: LIFECYCLE_VERSION, "keys": entries}, indent=2) + "\n"
