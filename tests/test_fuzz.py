"""Property: arbitrary bytes in any header the verifier parses get a 4xx, never a 5xx, never an
unhandled exception. Runs against the real server (``gateway.server.run``, what ``serve`` runs)
on loopback, over raw sockets so that nothing sanitises the bytes on the way."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import VerificationError
from gateway.signing import rfc9421
from tests import support
from tests.helpers import REQUIRED, flat_keyring, lib_message, lib_signer, random_secret

FUZZED_HEADERS = [
    "Signature",
    "Signature-Input",
    "Content-Digest",
    "Content-Type",
    "Content-Length",
    "Host",
    "X-Request-Id",
    "X-Gateway-Key-Id",
    "Connection",
    "Transfer-Encoding",
]
KEYS = {"key-v1": random_secret(), "key-v2": random_secret()}


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    ring = tmp / "ring.json"
    ring.write_text(json.dumps(KEYS))
    os.chmod(ring, 0o600)

    def raw(upstream: str) -> dict[str, Any]:
        return {
            "keyrings": {"ring": {"path": str(ring)}},
            "listeners": {"verify": {"port": 0}, "sign": {"port": 0}},
            "routes": [
                {"name": "in", "listener": "verify", "mode": "verify", "keyring": "ring", "upstream": upstream},
                {
                    "name": "out",
                    "listener": "sign",
                    "mode": "sign",
                    "keyring": "ring",
                    "max_body_bytes": 4096,
                    "upstream": upstream,
                },
            ],
        }

    with support.live_gateway(raw, tmp) as gw:
        yield {"ports": gw.ports, "errors": gw.errors}


def signed_request(port: int) -> tuple[str, CIMultiDict[str], bytes]:
    body = b'{"event": 1}'
    headers: CIMultiDict[str] = CIMultiDict({"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"})
    lib_signer({k: v.encode() for k, v in KEYS.items()}).sign(
        lib_message("POST", f"http://127.0.0.1:{port}/cb?x=1", headers),
        key_id="key-v1",
        nonce=random_secret()[:16],
        covered_component_ids=REQUIRED,
        body=body,
    )
    return "/cb?x=1", headers, body


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def status_of(reply: bytes) -> int:
    assert reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), reply[:100]
    return int(reply.split(b" ", 2)[1])


header_values = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet=st.characters(codec="latin-1"), max_size=120).map(lambda t: t.encode("latin-1")),
    st.sampled_from(
        [
            b'sig1=("@method";created=1',
            b"sig1=:!!!:",
            b'a=("@x" "@x");created=1',
            b"sig1=()",
            b"=",
            b",,,",
            b'sig1=("@method");created=99999999999999999',
            b"sha-256=:AAAA:, sha-512=(",
            b"\xff\xfe",
            b"-1",
        ]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    replacements=st.dictionaries(st.sampled_from(FUZZED_HEADERS), header_values, min_size=1, max_size=4),
    path=st.sampled_from([b"/cb?x=1", b"/cb", b"/cb?x=1&x=2", b"/%ff%00", b"//..//cb"]),
    listener=st.sampled_from(["verify", "sign"]),
)
def test_arbitrary_header_bytes_only_ever_get_4xx(
    live_gateway: dict[str, Any], replacements: dict[str, bytes], path: bytes, listener: str
) -> None:
    port = live_gateway["ports"][listener]
    _, headers, body = signed_request(live_gateway["ports"]["verify"])
    lines = [b"POST " + path + b" HTTP/1.1"]
    for name, value in headers.items():
        if name not in replacements:
            lines.append(name.encode() + b": " + value.encode("latin-1"))
    for name, value in replacements.items():
        lines.append(name.encode() + b": " + value)
    if "Content-Length" not in replacements and "Transfer-Encoding" not in replacements:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    reply = exchange(port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    status = status_of(reply)
    # 4xx, or 200 when the bytes landed somewhere the signature does not cover (or on the sign
    # listener, which signs whatever it is given): never a 5xx
    assert 400 <= status < 500 or status == 200, reply[:300]
    assert live_gateway["errors"].records == [], live_gateway["errors"].records[0].getMessage()


def test_well_formed_request_passes_the_same_path(live_gateway: dict[str, Any]) -> None:
    """Guard against a vacuous property: the unmodified request verifies and is forwarded."""
    port = live_gateway["ports"]["verify"]
    path, headers, body = signed_request(port)
    lines = [f"POST {path} HTTP/1.1".encode()]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    assert status_of(exchange(port, b"\r\n".join(lines) + b"\r\n\r\n" + body)) == 200


def bs_signed_request(port: int, wire_value: bytes) -> bytes:
    """A POST whose signature (by http-message-signatures) also covers ``"x-a";bs``, with the raw
    ``X-A`` bytes given; the library takes field bytes as Latin-1 text."""
    body = b'{"event": 1}'
    headers: CIMultiDict[str] = CIMultiDict({"Host": f"127.0.0.1:{port}", "X-A": wire_value.decode("latin-1")})
    lib_signer({k: v.encode() for k, v in KEYS.items()}).sign(
        lib_message("POST", f"http://127.0.0.1:{port}/cb", headers),
        key_id="key-v1",
        nonce=random_secret()[:16],
        covered_component_ids=(*REQUIRED, '"x-a";bs'),
        body=body,
        label="sig1",
    )
    lines = [b"POST /cb HTTP/1.1"] + [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def answer(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return status_of(head), body


@pytest.mark.parametrize("wire", [b"\xe2\x82\xac", b"caf\xe9", b"\xff"])
def test_bs_covers_the_wire_bytes_of_non_ascii_fields(live_gateway: dict[str, Any], wire: bytes) -> None:
    """Issue 9 item 4: non-ASCII bytes in a field covered with ``bs`` gave a 500 and a traceback
    (the value was re-encoded as Latin-1). ``bs`` covers the bytes as sent: the other library's
    signature over them verifies, and a wrong MAC is a plain signature mismatch."""
    port = live_gateway["ports"]["verify"]
    request = bs_signed_request(port, wire)
    assert b"X-A: " + wire + b"\r\n" in request
    status, body = answer(support.exchange(port, request))
    assert status == 200, body[:300]
    forged = bs_signed_request(port, wire)
    start = forged.index(b"Signature: sig1=:") + len(b"Signature: sig1=:")
    forged = forged[:start] + b"AAAA" + forged[start + 4 :]  # still base64 of 32 bytes, another MAC
    status, body = answer(support.exchange(port, forged))
    assert (status, json.loads(body)["reason"]) == (401, "signature_mismatch")
    assert live_gateway["errors"].records == []


@settings(max_examples=1500, deadline=None)
@given(
    sig_input=st.text(max_size=200),
    signature=st.text(max_size=120),
    digest=st.text(max_size=80),
    host=st.text(max_size=40),
    query=st.none() | st.text(max_size=40),
)
def test_verify_only_ever_raises_verification_error(
    sig_input: str, signature: str, digest: str, host: str, query: str | None
) -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Signature-Input": sig_input, "Signature": signature, "Content-Digest": digest}
    )
    view = rfc9421.RequestView("POST", host, "/cb", query, headers)
    with pytest.raises(VerificationError):
        rfc9421.verify(view, b"body", flat_keyring(**KEYS), rfc9421.VerifyPolicy(), 1_700_000_000)


@settings(max_examples=1000, deadline=None)
@given(
    components=st.lists(
        st.sampled_from(
            [
                '"@method"',
                '"@path"',
                '"@query"',
                '"@authority"',
                '"content-digest"',
                '"x"',
                '"@status"',
                '"@query-param";name="a"',
                '"content-type";sf',
                '"a";key="b"',
                '"@target-uri"',
                "tok",
                "1",
            ]
        ),
        max_size=6,
    ),
    params=st.text(alphabet=st.sampled_from(list(';=created"keyidalgnoncetag0123456789.-')), max_size=60),
)
def test_structured_but_wrong_inputs_never_crash(components: list[str], params: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Signature-Input": f"sig1=({' '.join(components)}){params}", "Signature": "sig1=:AAAA:", "X": "1"}
    )
    view = rfc9421.RequestView("POST", "h", "/cb", "a=1", headers)
    with pytest.raises(VerificationError):
        rfc9421.verify(view, b"", flat_keyring(**KEYS), rfc9421.VerifyPolicy(required=frozenset()), 1_700_000_000)
