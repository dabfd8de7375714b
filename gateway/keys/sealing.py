"""AES-256-GCM sealing of keyring files at rest.

A sealed file is a small JSON envelope::

    {"hmac_gateway_sealed": 1, "alg": "AES-256-GCM", "key_check": "<b64>",
     "nonce": "<b64 12 bytes>", "ciphertext": "<b64>"}

``key_check`` is an HMAC of a fixed label under the master key: it tells a *wrong* master
key (check differs) apart from a *corrupt* file (check matches, GCM tag fails). It reveals
nothing about the master key. The master key is 32 bytes, base64, from an environment variable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import SealError

SEALED_MARKER = "hmac_gateway_sealed"
_CHECK_LABEL = b"hmac-gateway keyring seal v1"
_AAD = b"hmac-gateway keyring v1"


def master_key_from_env(variable: str) -> bytes:
    value = os.environ.get(variable)
    if not value:
        raise SealError(f"the keyring is sealed but ${variable} (its master key) is not set")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"${variable} is not base64") from None
    if len(key) != 32:
        raise SealError(f"${variable} must hold 32 bytes (base64), it holds {len(key)}")
    return key


def _check(master: bytes) -> str:
    return base64.b64encode(hmac.digest(master, _CHECK_LABEL, hashlib.sha256)[:16]).decode()


def is_sealed(document: bytes) -> bool:
    try:
        data = json.loads(document)
    except ValueError:
        return False
    return isinstance(data, dict) and SEALED_MARKER in data


def seal(plaintext: bytes, master: bytes) -> bytes:
    nonce = os.urandom(12)
    ciphertext = AESGCM(master).encrypt(nonce, plaintext, _AAD)
    envelope = {
        SEALED_MARKER: 1,
        "alg": "AES-256-GCM",
        "key_check": _check(master),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return (json.dumps(envelope, indent=2) + "\n").encode()


def _envelope(document: bytes, where: str) -> tuple[str, bytes, bytes]:
    try:
        envelope = json.loads(document)
        if envelope.get(SEALED_MARKER) != 1 or envelope.get("alg") != "AES-256-GCM":
            raise SealError(f"{where}: unsupported sealed-file version or algorithm")
        key_check = str(envelope["key_check"])
        nonce = base64.b64decode(envelope["nonce"], validate=True)
        ciphertext = base64.b64decode(envelope["ciphertext"], validate=True)
    except SealError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise SealError(f"{where}: sealed file is corrupt (envelope unreadable)") from None
    return key_check, nonce, ciphertext


def _open(master: bytes, nonce: bytes, ciphertext: bytes, where: str) -> bytes:
    try:
        return AESGCM(master).decrypt(nonce, ciphertext, _AAD)
    except (InvalidTag, ValueError):
        raise SealError(f"{where}: sealed file is corrupt (authentication failed)") from None


def unseal(document: bytes, master: bytes, *, where: str) -> bytes:
    key_check, nonce, ciphertext = _envelope(document, where)
    if not hmac.compare_digest(key_check, _check(master)):
        raise SealError(f"{where}: wrong master key (the file was sealed under a different key)")
    return _open(master, nonce, ciphertext, where)


def unseal_any(document: bytes, variables: Sequence[str], *, where: str) -> tuple[bytes, str]:
    """Open ``document`` with the first master key, in the order of ``variables``, that sealed it.

    Returns the plaintext and the variable whose key opened it. During a master-key change the
    list is (new, previous): the check tells which key sealed the file, so a file sealed under
    neither is "wrong master key" and one whose check matches but whose tag fails is "corrupt",
    exactly as with one key. A variable that is not set is skipped, unless none is set.
    """
    key_check, nonce, ciphertext = _envelope(document, where)
    present = [v for v in variables if os.environ.get(v)]
    if not present:
        raise SealError(
            f"the keyring is sealed but ${variables[0]} (its master key) is not set"
            if len(variables) == 1
            else f"the keyring is sealed but none of {', '.join('$' + v for v in variables)} is set"
        )
    for variable in present:
        master = master_key_from_env(variable)
        if hmac.compare_digest(key_check, _check(master)):
            return _open(master, nonce, ciphertext, where), variable
    tried = " nor ".join("$" + v for v in present)
    raise SealError(f"{where}: wrong master key (the file was sealed under neither {tried})")
