"""Shared test helpers: a fake clock, keyring builders, and adapters for the independent
``http-message-signatures`` package (the other side of every interop test)."""

from __future__ import annotations

import datetime
import json
import secrets
import types
from pathlib import Path
from typing import Any

from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver, algorithms
from multidict import CIMultiDict

from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring
from gateway.signing.scheme import RequestView

VECTORS = Path(__file__).parent / "vectors"
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def load_vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


class FakeClock:
    """An injected clock: tests move time by assignment, never by sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def random_secret() -> str:
    return secrets.token_hex(32)


def flat_keyring(name: str = "ring", **keys: str) -> Keyring:
    return parse_keyring(name, json.dumps(keys))


def lib_message(method: str, url: str, headers: CIMultiDict[str] | dict[str, str]) -> types.SimpleNamespace:
    """The message shape http-message-signatures works on (method, url, headers)."""
    return types.SimpleNamespace(method=method, url=url, headers=headers)


def lib_signer(keys: dict[str, bytes]) -> HTTPMessageSigner:
    return HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys=keys, private_keys=keys),
    )


def lib_verifier(keys: dict[str, bytes]) -> HTTPMessageVerifier:
    return HTTPMessageVerifier(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys=keys, private_keys=keys),
    )


REQUIRED = ("@method", "@authority", "@path", "@query", "content-digest")


def lib_signed_webhook(key_id: str, material: bytes, created: int) -> tuple[RequestView, bytes]:
    """A POST signed by http-message-signatures as a partner would sign it (alg, tag, nonce,
    Content-Type covered), and its body."""
    body = b'{"event": "paid"}'
    headers: CIMultiDict[str] = CIMultiDict({"Host": "gw.example", "Content-Type": "application/json"})
    lib_signer({key_id: material}).sign(
        lib_message("POST", "http://gw.example/hooks?id=7", headers),
        key_id=key_id,
        created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC),
        nonce=random_secret()[:22],
        covered_component_ids=(*REQUIRED, "content-type"),
        include_alg=True,
        tag="partner",
        label="sig1",
        body=body,
    )
    return RequestView("POST", "gw.example", "/hooks", "id=7", headers), body


def b2_view(vector: Any) -> RequestView:
    """The RFC 9421 Appendix B.2 test request (from tests/vectors/rfc9421-b25.json)."""
    req = vector["request"]
    headers: CIMultiDict[str] = CIMultiDict(req["headers"])
    path, _, query = req["target"].partition("?")
    return RequestView(
        method=req["method"], authority=headers["Host"], path=path, query=query, headers=headers, scheme=req["scheme"]
    )


def b2_keyring(vector: Any) -> Keyring:
    return parse_keyring("rfc", json.dumps({vector["key_id"]: vector["key_base64"]}), encoding="base64")
