"""Grammar-aware request fuzzing against a live gateway (issue 9): valid signed requests, mutated
the way an attacker would — odd components and parameters, bad base64, duplicate and split
headers, long values, non-UTF-8 bytes, Connection and underscore tricks, odd paths, broken
framing, clients that leave mid-body — sent over raw sockets.

Verdicts checked for every request:
- never a 5xx, never a traceback (no ERROR record from the gateway or aiohttp);
- a verified request reaches the upstream with every covered field exactly as it was signed
  (nothing stripped by ``Connection``), and with no header whose name carries ``_``;
- the unmutated requests pass (the property is not vacuous).

Seeded and bounded: ``HMAC_GATEWAY_FUZZ_REQUESTS`` requests (default 3000) within
``HMAC_GATEWAY_FUZZ_SECONDS`` (default 120). The long run, as documented in the README:
``HMAC_GATEWAY_FUZZ_REQUESTS=100000 HMAC_GATEWAY_FUZZ_SECONDS=3600 scripts/test tests/test_fuzz_requests.py``.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from tests.helpers import lib_message, lib_signer, random_secret
from tests.support import LiveGateway, exchange, live_gateway

KEYS = {"key-v1": random_secret(), "key-v2": random_secret()}
REQUESTS = int(os.environ.get("HMAC_GATEWAY_FUZZ_REQUESTS", "3000"))
SECONDS = float(os.environ.get("HMAC_GATEWAY_FUZZ_SECONDS", "120"))
SEED = int(os.environ.get("HMAC_GATEWAY_FUZZ_SEED", "9421"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-requests")
    ring = tmp / "ring.json"
    ring.write_text(json.dumps(KEYS))
    os.chmod(ring, 0o600)

    def raw(upstream: str) -> dict[str, Any]:
        return {
            "keyrings": {"ring": {"path": str(ring)}},
            "listeners": {"verify": {"port": 0}, "sign": {"port": 0}},
            "routes": [
                {
                    "name": "in",
                    "listener": "verify",
                    "mode": "verify",
                    "keyring": "ring",
                    "upstream": upstream,
                    "max_body_bytes": 65536,
                },
                {
                    "name": "out",
                    "listener": "sign",
                    "mode": "sign",
                    "keyring": "ring",
                    "upstream": upstream,
                    "max_body_bytes": 65536,
                },
            ],
        }

    with live_gateway(raw, tmp) as gw:
        yield gw


# -- the request model ------------------------------------------------------------------------


@dataclass
class Request:
    listener: str
    method: bytes = b"POST"
    target: bytes = b"/cb?x=1"
    version: bytes = b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    framing: str = "length"  # length | chunked | none
    chunks: list[bytes] | None = None
    half_close_after: int | None = None  # send only this many body bytes, then FIN
    mutations: list[str] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def set(self, name: bytes, value: bytes) -> None:
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        self.headers.append((name, value))

    def encode(self) -> bytes:
        lines = [self.method + b" " + self.target + b" " + self.version, *(n + b": " + v for n, v in self.headers)]
        body = self.body
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(self.body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            pieces = self.chunks if self.chunks is not None else [self.body[i : i + 5] for i in range(0, len(body), 5)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
        lines.append(b"Connection: close")
        if self.half_close_after is not None:
            body = body[: self.half_close_after]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


COMPONENT_SETS = [
    ("@method", "@authority", "@path", "@query", "content-digest"),
    ("@method", "@authority", "@path", "@query", "content-digest", "content-type"),
    ("@method", "@authority", "@path", "@query", "content-digest", "content-type", "x-tenant"),
    ("@method", "@authority", "@target-uri", "@path", "@query", "content-digest", "x-tenant"),
]


def signed(rng: random.Random, port: int) -> Request:
    body = json.dumps({"event": rng.randrange(10**6)}).encode()
    headers: CIMultiDict[str] = CIMultiDict(
        {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "X-Tenant": "acme"}
    )
    components = rng.choice(COMPONENT_SETS)
    lib_signer({k: v.encode() for k, v in KEYS.items()}).sign(
        lib_message("POST", f"http://127.0.0.1:{port}/cb?x=1", headers),
        key_id=rng.choice(list(KEYS)),
        nonce=random_secret()[:16] if rng.random() < 0.8 else None,
        covered_component_ids=components,
        body=body,
        label=rng.choice(["sig1", "cb", "a.b-c_d*"]),
    )
    return Request("verify", headers=[(k.encode(), v.encode()) for k, v in headers.items()], body=body)


def plain(rng: random.Random) -> Request:
    return Request(
        "sign",
        method=rng.choice([b"POST", b"GET", b"PUT", b"DELETE"]),
        headers=[(b"Host", b"backend"), (b"Content-Type", b"application/json"), (b"X-Tenant", b"acme")],
        body=b'{"a": 1}',
    )


# -- mutations: each takes the request and the rng and changes it in place ----------------------

ODD_COMPONENTS = [
    b'"x-a";bs',
    b'"x-tenant";bs',
    b'"content-digest";sf',
    b'"x-a";key="k"',
    b'"x-tenant";sf',
    b'"@query-param";name="x"',
    b'"@query-param";name="nope"',
    b'"@query-param"',
    b'"@QUERY"',
    b'"@foo"',
    b'"connection"',
    b'"x-a";sf;bs',
    b'"@signature-params"',
    b'"@request-target"',
    b'"@scheme"',
    b'"x-a";req',
    b'"content-type"',
    b'"Content-Type"',
    b'"absent-field"',
    b'"priority";sf',
    b'"x-a";tr',
    b"token",
    b"1",
    b"?1",
    b":AAAA:",
]
ODD_PARAMS = [
    b";created=99999999999999999",
    b";created=-1",
    b';created="1"',
    b";created=1.5",
    b";created=0",
    b';keyid=""',
    b';keyid="' + b"k" * 300 + b'"',
    b';keyid="nope"',
    b';keyid="a\\"b"',
    b";keyid=tok",
    b';alg="hmac-sha512"',
    b';alg="rsa-pss-sha512"',
    b";foo=1",
    b";created=1;created=2",
    b";expires=1",
    b";expires=99999999999",
    b';nonce="' + b"n" * 5000 + b'"',
    b";nonce=?1",
    b';tag="other"',
    b";",
    b";;",
    b"; created=1",
]
BAD_SIGNATURES = [b":!!!:", b":QUJD=:", b"::", b":" + b"A" * 8000 + b":", b"token", b"(:AAAA:)", b':AAAA:;x="y"', b"1"]
ODD_VALUES = [
    b"\xff\xfe\xfd",
    b"\xe2\x82\xac",
    b"caf\xc3\xa9",
    b"a\x01b",
    b"a\tb",
    b" ",
    b"x" * 9000,
    b"=",
    b",,,",
    b'"',
    b"\\",
]
ODD_TARGETS = [
    b"/cb/..;/admin",
    b"/a%00b",
    b"//cb",
    b"/cb%2f..",
    b"/%ff%fe",
    b"/caf\xc3\xa9",
    b"/" + b"a" * 7000,
    b"/cb?x=1&x=2",
    b"/cb?x=%zz",
    b"*",
    b"http://127.0.0.1/cb",
    b"cb",
    b"/cb#frag",
    b"/cb?",
    b"/./cb",
]


def _sig_input(req: Request) -> bytes:
    return req.header(b"Signature-Input") or b'sig1=("@method");created=1'


def add_odd_component(req: Request, rng: random.Random) -> None:
    text = _sig_input(req)
    req.set(b"Signature-Input", text.replace(b"(", b"(" + rng.choice(ODD_COMPONENTS) + b" ", 1))
    if rng.random() < 0.5:
        req.headers.append((b"X-A", rng.choice(ODD_VALUES)))


def odd_params(req: Request, rng: random.Random) -> None:
    req.set(b"Signature-Input", _sig_input(req) + rng.choice(ODD_PARAMS))


def replace_param(req: Request, rng: random.Random) -> None:
    text = _sig_input(req)
    name = rng.choice([b"created", b"keyid", b"nonce", b"alg"])
    odd = rng.choice(ODD_PARAMS).lstrip(b";")
    req.set(b"Signature-Input", re.sub(rb";" + name + rb"=[^;]*", b";" + odd, text, count=1))


def bad_signature(req: Request, rng: random.Random) -> None:
    label = _sig_input(req).split(b"=", 1)[0]
    req.set(b"Signature", label + b"=" + rng.choice(BAD_SIGNATURES))


def label_games(req: Request, rng: random.Random) -> None:
    sig_in, sig = _sig_input(req), req.header(b"Signature") or b"sig1=:AAAA:"
    choice = rng.randrange(4)
    if choice == 0:  # the same label twice
        req.set(b"Signature-Input", sig_in + b", " + sig_in)
    elif choice == 1:  # mismatched labels
        req.set(b"Signature", b"other" + sig[sig.index(b"=") :])
    elif choice == 2:  # many signatures
        req.set(
            b"Signature-Input", b", ".join([sig_in.replace(sig_in.split(b"=")[0], b"s%d" % i, 1) for i in range(12)])
        )
    else:  # upper-case label
        req.set(b"Signature-Input", sig_in.upper())


def split_headers(req: Request, rng: random.Random) -> None:
    name = rng.choice([b"Signature-Input", b"Signature", b"Content-Digest", b"Host", b"X-Tenant", b"Content-Type"])
    value = req.header(name)
    if value is None:
        return
    if rng.random() < 0.5:
        req.headers.append((name, value))  # duplicated
    else:
        req.headers.append((name, b"extra"))  # a second, different line


def odd_header(req: Request, rng: random.Random) -> None:
    name = rng.choice([b"X-A", b"X-Tenant", b"Content-Digest", b"Content-Type", b"X-Gateway-Key-Id", b"X-Request-Id"])
    req.set(name, rng.choice(ODD_VALUES))


def connection_tricks(req: Request, rng: random.Random) -> None:
    req.headers.append(
        (
            b"Connection",
            rng.choice(
                [
                    b"X-Tenant, Content-Type, Content-Digest",
                    b"Host",
                    b"keep-alive, X-Tenant",
                    b"Signature",
                    b"close, x-a",
                ]
            ),
        )
    )


def underscore_twin(req: Request, rng: random.Random) -> None:
    req.headers.append((rng.choice([b"X_Tenant", b"X-Gateway-Key_Id", b"Content_Type", b"x_request_id"]), b"evil"))


def expect(req: Request, rng: random.Random) -> None:
    req.headers.append((b"Expect", rng.choice([b"100-continue", b"\xff", b"other", b"100-continue, x"])))


def odd_target(req: Request, rng: random.Random) -> None:
    req.target = rng.choice(ODD_TARGETS)


def odd_method(req: Request, rng: random.Random) -> None:
    req.method = rng.choice([b"post", b"GET", b"HEAD", b"OPTIONS", b"FOO", b"CONNECT", b"TRACE", b"PATCH"])
    if rng.random() < 0.3:
        req.version = rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"])


def body_games(req: Request, rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        req.body += b" "  # no longer matches the digest
    elif choice == 1:
        req.framing = "chunked"
        req.chunks = [req.body[:1], req.body[1:]] if rng.random() < 0.5 else None
    elif choice == 2:
        req.body = b"x" * rng.choice([0, 65536, 65537, 200000])
    else:
        req.framing = "none"


def leave_mid_body(req: Request, rng: random.Random) -> None:
    req.half_close_after = rng.randrange(0, max(1, len(req.body)))


def digest_games(req: Request, rng: random.Random) -> None:
    req.set(
        b"Content-Digest",
        rng.choice(
            [b"sha-256=:AAAA:", b"sha-512=:AAAA:", b"md5=:AAAA:", b"sha-256=(", b"sha-256=:!!:", b"", b"x" * 100]
        ),
    )


MUTATIONS: list[Callable[[Request, random.Random], None]] = [
    add_odd_component,
    odd_params,
    replace_param,
    bad_signature,
    label_games,
    split_headers,
    odd_header,
    connection_tricks,
    underscore_twin,
    expect,
    odd_target,
    odd_method,
    body_games,
    leave_mid_body,
    digest_games,
]


# -- verdicts ---------------------------------------------------------------------------------


def status_of(reply: bytes) -> int | None:
    """The final status (a ``100 Continue`` ahead of it skipped); None when nothing came back."""
    while reply.startswith(b"HTTP/1.1 100 "):
        reply = reply.partition(b"\r\n\r\n")[2]
    if not reply:
        return None
    # aiohttp answers in the request's version, even a made-up one such as HTTP/2.0
    assert re.match(rb"HTTP/\d\.\d \d{3}", reply), reply[:200]
    return int(reply.split(b" ", 2)[1])


def covered_fields(signature_input: bytes) -> list[bytes]:
    """Plain covered field names (no parameters) of every signature in the header."""
    return [m.lower() for m in re.findall(rb'"([a-z0-9-]+)"(?=[ )])', signature_input)]


def check_forwarded(req: Request, reply: bytes) -> None:
    """A verified request reached the upstream exactly as signed, and with no '_' header names."""
    echoed = json.loads(reply.rpartition(b"\r\n\r\n")[2])
    received = CIMultiDict((k, v) for k, v in echoed["headers"])
    assert not [k for k in received if "_" in k], (req.mutations, list(received))
    for name in covered_fields(req.header(b"Signature-Input") or b""):
        sent = [v for n, v in req.headers if n.lower() == name]
        if sent and name not in (b"content-length", b"host"):
            got = received.getall(name.decode(), [])
            assert ", ".join(got) == ", ".join(v.decode("latin-1") for v in sent), (req.mutations, name, got)


def test_mutated_requests_never_get_a_5xx_or_a_traceback_and_forward_only_what_verified(
    gateway: LiveGateway,
) -> None:
    rng = random.Random(SEED)
    deadline = time.monotonic() + SECONDS
    statuses: dict[int | None, int] = {}
    sent = 0
    while sent < REQUESTS and time.monotonic() < deadline:
        base = signed(rng, gateway.ports["verify"]) if rng.random() < 0.75 else plain(rng)
        picks = rng.sample(MUTATIONS, k=rng.choice([0, 1, 1, 2, 3])) if sent % 10 else []
        for mutate in picks:
            mutate(base, rng)
            base.mutations.append(mutate.__name__)
        reply = exchange(
            gateway.ports[base.listener], base.encode(), half_close=base.half_close_after is not None, timeout=3
        )
        status = status_of(reply)
        sent += 1
        statuses[status] = statuses.get(status, 0) + 1
        assert status is None or status < 500, (base.mutations, reply[:400])
        assert status is not None or base.half_close_after is not None, base.mutations
        if status == 200 and base.listener == "verify" and base.method in (b"POST", b"GET", b"PUT"):
            check_forwarded(base, reply)
        if not picks and base.listener == "verify":
            assert status == 200, reply[:400]  # unmutated signed requests verify: not vacuous
        assert gateway.errors.records == [], (base.mutations, gateway.errors.records[0].getMessage())
    assert sent >= min(REQUESTS, 500), f"only {sent} requests in {SECONDS}s"
    assert statuses.get(200, 0) > sent // 20 and statuses.get(401, 0) > sent // 20, statuses
