"""End to end, both directions: real client -> gateway (real aiohttp server) -> real upstream,
with the independent http-message-signatures package on the other side of every signature."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.observability import AccessLog
from tests.conftest import Gateway, GatewayFactory, Recorder
from tests.helpers import REQUIRED, FakeClock, random_secret
from tests.support import eventually, free_port, lib_signed_headers, lib_verify_received, post, raw_http

# -- outbound: sign listener ------------------------------------------------------------------


async def test_signed_request_verifies_with_the_other_library(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    body = b'{"order": 1}'
    status, doc, headers = await post(
        gw.url("sign", "/orders/new?b=2&a=%20x"),
        data=body,
        headers={"Content-Type": "application/json", "X-Request-Id": "req-123"},
    )
    assert status == 200 and doc["ok"] is True
    assert headers["X-Request-Id"] == "req-123"
    (received,) = upstream.received
    assert received.raw_path == "/up/orders/new?b=2&a=%20x"  # upstream base path + the exact request target
    assert received.headers["Host"] == upstream.url.removeprefix("http://")
    assert received.headers["X-Request-Id"] == "req-123"
    results = lib_verify_received(gw, received, (*REQUIRED, "content-type"))
    params = results[0].parameters
    assert params["keyid"] == "key-v2"  # flat map: the last entry signs
    assert params["alg"] == "hmac-sha256" and params["tag"] == "hmac-gateway"
    assert isinstance(params["created"], int) and len(params["nonce"]) >= 16
    assert set(params) == {"created", "keyid", "alg", "nonce", "tag"}  # RFC-registered only


async def test_bodyless_get_is_signed_with_empty_digest(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    status, _, _ = await post(gw.url("sign", "/ping"), method="GET")
    assert status == 200
    (received,) = upstream.received
    assert received.body == b""
    assert received.headers["Content-Digest"] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    lib_verify_received(gw, received)


async def test_sign_strips_hop_by_hop_and_client_signature_headers(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    gw = await make_gateway()
    status, _, resp_headers = await post(
        gw.url("sign", "/x"),
        data=b"abc",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Signature": "sig1=:AAAA:",
            "Signature-Input": 'sig1=("@method");created=1',
            "Content-Digest": "sha-256=:AAAA:",
            "X-Gateway-Key-Id": "key-v1",
            "Host": "evil.example",
        },
    )
    assert status == 200
    (received,) = upstream.received
    for name in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authorization", "X-Gateway-Key-Id"):
        assert name not in received.headers, name
    assert received.headers["Host"] != "evil.example"  # Host never picks (or reaches) the upstream
    assert len(received.headers.getall("Signature")) == 1
    assert received.headers["Content-Digest"] != "sha-256=:AAAA:"
    lib_verify_received(gw, received)
    # hop-by-hop response headers do not flow back either
    assert "X-Hop-Reply" not in resp_headers and "Keep-Alive" not in resp_headers
    assert resp_headers["X-Upstream"] == "yes"


async def test_upstream_response_streams_back_intact(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    async with aiohttp.ClientSession() as session, session.get(gw.url("sign", "/stream")) as resp:
        data = await resp.read()
    assert resp.status == 200
    assert (
        hashlib.sha256(data).hexdigest() == hashlib.sha256(b"".join(bytes([i]) * 16384 for i in range(64))).hexdigest()
    )


async def test_cookies_from_upstream_are_not_shared_between_clients(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    gw = await make_gateway()
    _, _, headers = await post(gw.url("sign", "/a"))
    assert headers["Set-Cookie"].startswith("session=abc")  # passed to the client that got it
    await post(gw.url("sign", "/b"))
    assert "Cookie" not in upstream.received[1].headers  # but never replayed for someone else


# -- inbound: verify listener -------------------------------------------------------------------


@pytest.mark.parametrize("key_id", ["key-v1", "key-v2"])
async def test_library_signed_callback_is_forwarded_with_key_id(
    make_gateway: GatewayFactory, upstream: Recorder, key_id: str
) -> None:
    gw = await make_gateway()
    headers = lib_signed_headers(gw, key_id, extra={"X-Gateway-Key-Id": "spoofed"})
    status, _, _ = await post(gw.url("verify", "/hooks/pay?id=7"), data=b'{"amount": 42}', headers=headers)
    assert status == 200
    (received,) = upstream.received
    assert received.headers.getall("X-Gateway-Key-Id") == [key_id]
    assert "Signature" not in received.headers and "Signature-Input" not in received.headers
    assert received.body == b'{"amount": 42}'


def _tamper_body(h: CIMultiDict[str]) -> dict[str, Any]:
    return {"data": b'{"amount": 4200}'}


def _set(name: str, value: str) -> Any:
    def mutate(h: CIMultiDict[str]) -> dict[str, Any]:
        h[name] = value
        return {}

    return mutate


def _drop(name: str) -> Any:
    def mutate(h: CIMultiDict[str]) -> dict[str, Any]:
        del h[name]
        return {}

    return mutate


REJECTIONS = [
    ("tampered body", _tamper_body, "digest_mismatch"),
    ("tampered path", lambda h: {"path": "/hooks/refund?id=7"}, "signature_mismatch"),
    ("tampered query", lambda h: {"path": "/hooks/pay?id=8"}, "signature_mismatch"),
    ("tampered method", lambda h: {"method": "PUT"}, "signature_mismatch"),
    ("missing signature", _drop("Signature"), "missing_signature"),
    ("missing input", _drop("Signature-Input"), "missing_signature"),
    ("malformed signature", _set("Signature", "cb=%%%"), "malformed_signature"),
    ("malformed input", _set("Signature-Input", "cb=(("), "malformed_signature"),
    (
        "wrong digest",
        _set("Content-Digest", "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"),
        "digest_mismatch",
    ),
    ("missing digest", _drop("Content-Digest"), "missing_digest"),
]


@pytest.mark.parametrize(("case", "mutate", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
async def test_bad_callbacks_get_401_problem_and_are_not_forwarded(
    make_gateway: GatewayFactory, upstream: Recorder, case: str, mutate: Any, reason: str
) -> None:
    gw = await make_gateway()
    headers = lib_signed_headers(gw, "key-v1")
    overrides = mutate(headers)
    path = overrides.get("path", "/hooks/pay?id=7")
    status, doc, resp_headers = await post(
        gw.url("verify", path),
        method=overrides.get("method", "POST"),
        data=overrides.get("data", b'{"amount": 42}'),
        headers=headers,
    )
    assert status == 401
    assert resp_headers["Content-Type"] == "application/problem+json"
    assert doc["reason"] == reason and doc["status"] == 401
    assert "signature_base" not in doc  # debug echo is opt-in per route
    assert upstream.received == []
    for secret in gw.keys.values():
        assert secret not in json.dumps(doc)


async def test_unknown_key_stale_future_and_replay(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    gw = await make_gateway()
    url = gw.url("verify", "/hooks/pay?id=7")
    body = b'{"amount": 42}'
    gw.keys["key-v9"] = random_secret()  # the sender knows a key the gateway does not
    status, doc, _ = await post(url, data=body, headers=lib_signed_headers(gw, "key-v9"))
    assert (status, doc["reason"]) == (401, "unknown_key")

    stale = lib_signed_headers(gw, "key-v1", created=clock.now - 301)
    status, doc, _ = await post(url, data=body, headers=stale)
    assert (status, doc["reason"]) == (401, "stale")

    future = lib_signed_headers(gw, "key-v1", created=clock.now + 31)
    status, doc, _ = await post(url, data=body, headers=future)
    assert (status, doc["reason"]) == (401, "future")

    fresh = lib_signed_headers(gw, "key-v1")
    assert (await post(url, data=body, headers=fresh))[0] == 200
    status, doc, _ = await post(url, data=body, headers=fresh)
    assert (status, doc["reason"]) == (401, "replayed")
    assert len(upstream.received) == 1

    # without a nonce the signature itself is the replay key
    no_nonce = lib_signed_headers(gw, "key-v1", nonce=None)
    assert (await post(url, data=body, headers=no_nonce))[0] == 200
    assert (await post(url, data=body, headers=no_nonce))[1]["reason"] == "replayed"


async def test_replay_entry_outlives_nothing_it_must_not(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    """A replay is refused as 'replayed' inside the window and as 'stale' after it: never accepted."""
    gw = await make_gateway()
    url = gw.url("verify", "/hooks/pay?id=7")
    headers = lib_signed_headers(gw, "key-v1")
    assert (await post(url, data=b'{"amount": 42}', headers=headers))[0] == 200
    clock.advance(299)
    assert (await post(url, data=b'{"amount": 42}', headers=headers))[1]["reason"] == "replayed"
    clock.advance(10)
    assert (await post(url, data=b'{"amount": 42}', headers=headers))[1]["reason"] == "stale"


async def test_retiring_key_past_expiry_is_refused(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    old, new = random_secret(), random_secret()
    expires = datetime.datetime.fromtimestamp(int(clock.now) + 60, tz=datetime.UTC)
    document = {
        "hmac_gateway_keyring": 1,
        "keys": [
            {"id": "key-v1", "secret": old, "state": "retiring", "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
            {"id": "key-v2", "secret": new, "state": "primary"},
            {"id": "key-v3", "secret": random_secret(), "state": "pending"},
        ],
    }
    gw = await make_gateway(keys={"key-v1": old, "key-v2": new}, document=document)
    # the lifecycle primary signs outbound, never the pending key
    await post(gw.url("sign", "/x"), data=b"1")
    assert lib_verify_received(gw, upstream.received[-1])[0].parameters["keyid"] == "key-v2"
    url = gw.url("verify", "/hooks/pay?id=7")
    assert (await post(url, data=b'{"amount": 42}', headers=lib_signed_headers(gw, "key-v1")))[0] == 200
    clock.now = expires.timestamp()  # no reload, no controller run: the clock alone retires it
    status, doc, _ = await post(
        url, data=b'{"amount": 42}', headers=lib_signed_headers(gw, "key-v1", created=clock.now)
    )
    assert (status, doc["reason"]) == (401, "expired_key")


async def test_new_key_added_to_file_is_accepted_without_restart(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    gw = await make_gateway()
    url = gw.url("verify", "/hooks/pay?id=7")
    gw.keys["key-v3"] = random_secret()
    gw.write_keyring(gw.keys)  # what `jq '. + {"key-v3": ...}'` does to the secret
    status, doc, _ = await post(url, data=b'{"amount": 42}', headers=lib_signed_headers(gw, "key-v3"))
    assert doc["reason"] == "unknown_key"  # ...and that triggered one early refresh
    cache = gw.runtime.caches["ring"]
    await eventually(lambda: cache.keyring is not None and cache.keyring.get("key-v3") is not None)
    status, _, _ = await post(url, data=b'{"amount": 42}', headers=lib_signed_headers(gw, "key-v3"))
    assert status == 200
    assert upstream.received[-1].headers["X-Gateway-Key-Id"] == "key-v3"


async def test_debug_mode_echoes_signature_base(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    def debug(raw: dict[str, Any]) -> None:
        raw["routes"][1]["debug_signature_base"] = True

    gw = await make_gateway(tweak=debug)
    headers = lib_signed_headers(gw, "key-v1")
    status, doc, _ = await post(
        gw.url("verify", "/hooks/pay?id=7"), method="PUT", data=b'{"amount": 42}', headers=headers
    )
    assert (status, doc["reason"]) == (401, "signature_mismatch")
    assert doc["signature_base"].startswith('"@method": PUT\n"@authority": 127.0.0.1:')


# -- limits, routing, failures -------------------------------------------------------------------


def _limit(raw: dict[str, Any]) -> None:
    for route in raw["routes"]:
        route["max_body_bytes"] = 1024


async def test_oversized_bodies_get_413_before_forwarding(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway(tweak=_limit)
    status, doc, _ = await post(gw.url("sign", "/x"), data=b"x" * 1025)
    assert (status, doc["reason"]) == (413, "body_too_large")

    big = b"y" * 32768
    headers = lib_signed_headers(gw, "key-v1", path="/x", body=big)

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    status, doc, _ = await post(gw.url("verify", "/x"), data=chunks(), headers=headers)
    assert (status, doc["reason"]) == (413, "body_too_large")
    assert (await post(gw.url("sign", "/x"), data=b"x" * 1024))[0] == 200
    assert len(upstream.received) == 1


async def test_unsigned_upload_is_refused_before_its_body_is_read(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    """Cheap checks first: a request with no valid signature headers costs no body read."""
    gw = await make_gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port("verify"))
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n" + b"z" * 1000)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(4096), 5)  # answered while 99.999 MB are still unsent
    writer.close()
    assert reply.startswith(b"HTTP/1.1 401") and b"missing_signature" in reply
    assert upstream.received == []


@pytest.mark.parametrize(
    ("request_line", "status", "reason"),
    [
        (b"GET http://169.254.169.254/latest/meta-data HTTP/1.1", b"400", b"absolute_form_target"),
        (b"CONNECT 127.0.0.1:22 HTTP/1.1", b"405", b"method_not_allowed"),
        (b"OPTIONS * HTTP/1.1", b"400", b"absolute_form_target"),
    ],
)
async def test_not_an_open_proxy(
    make_gateway: GatewayFactory, upstream: Recorder, request_line: bytes, status: bytes, reason: bytes
) -> None:
    gw = await make_gateway()
    for listener in ("sign", "verify"):
        reply = await raw_http(gw.port(listener), request_line + b"\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == status, reply[:200]
        assert reason in reply
    assert upstream.received == []


async def test_no_route_is_404(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    def prefix(raw: dict[str, Any]) -> None:
        raw["routes"][0]["path_prefix"] = "/api"

    gw = await make_gateway(tweak=prefix)
    assert (await post(gw.url("sign", "/apix")))[1]["reason"] == "no_route"
    assert (await post(gw.url("sign", "/api/v1")))[0] == 200


async def test_unreachable_upstream_is_502(make_gateway: GatewayFactory) -> None:
    def dead(raw: dict[str, Any]) -> None:
        raw["routes"][0]["upstream"] = f"http://127.0.0.1:{free_port()}"

    gw = await make_gateway(tweak=dead)
    status, doc, _ = await post(gw.url("sign", "/x"))
    assert (status, doc["reason"]) == (502, "upstream_unavailable")
    assert "127.0.0.1" not in json.dumps(doc)  # no internal detail


async def test_slow_upstream_is_504(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    def slow(raw: dict[str, Any]) -> None:
        raw["routes"][0]["upstream_timeout_seconds"] = 0.3

    gw = await make_gateway(tweak=slow)
    status, doc, _ = await post(gw.url("sign", "/slow"))
    assert (status, doc["reason"]) == (504, "upstream_timeout")


async def test_not_ready_until_keyring_loads_and_503_without_keys(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    gw = await make_gateway(keys={})  # the keyring file does not exist and create is off
    status, doc, _ = await post(gw.url("sign", "/readyz"), method="GET")
    assert status == 503 and doc["keyrings"]["ring"]["loaded"] is False
    assert "does not exist" in doc["keyrings"]["ring"]["last_error"]
    assert (await post(gw.url("sign", "/healthz"), method="GET"))[0] == 200
    status, doc, _ = await post(gw.url("sign", "/x"))
    assert (status, doc["reason"]) == (503, "keyring_unavailable")
    gw.write_keyring({"key-v1": random_secret()})
    assert await gw.runtime.caches["ring"].refresh()
    assert (await post(gw.url("sign", "/readyz"), method="GET"))[0] == 200
    assert (await post(gw.url("sign", "/x")))[0] == 200


async def test_client_token_guards_a_sign_listener(
    make_gateway: GatewayFactory, upstream: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = random_secret()
    monkeypatch.setenv("TEST_SIGN_TOKEN", token)

    def guarded(raw: dict[str, Any]) -> None:
        raw["listeners"]["sign"]["client_token_env"] = "TEST_SIGN_TOKEN"

    gw = await make_gateway(tweak=guarded)
    status, doc, _ = await post(gw.url("sign", "/x"), data=b"1")
    assert (status, doc["reason"]) == (401, "client_token_required")
    status, doc, _ = await post(
        gw.url("sign", "/x"), data=b"1", headers={"X-Gateway-Token": token[:-1] + ("1" if token[-1] == "0" else "0")}
    )
    assert (status, doc["reason"]) == (401, "client_token_required")
    assert upstream.received == []
    assert (await post(gw.url("sign", "/healthz"), method="GET"))[0] == 200  # probes need no token
    assert (await post(gw.url("sign", "/x"), data=b"1", headers={"X-Gateway-Token": token}))[0] == 200
    assert "X-Gateway-Token" not in upstream.received[0].headers  # for the gateway only
    assert (await post(gw.url("verify", "/x")))[1]["reason"] == "missing_signature"  # other listeners unaffected
    config = gw.runtime.config
    assert token not in repr(config) and token not in json.dumps(config.to_public_dict())


async def test_upstream_failing_mid_stream_aborts_the_client_connection(make_gateway: GatewayFactory) -> None:
    """Once the status line is out, a second response would corrupt the connection for a pooling
    client: the gateway must drop the connection instead."""

    async def broken_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + b"a" * 10)
        await writer.drain()
        writer.close()  # 290 bytes short

    server = await asyncio.start_server(broken_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    def broken(raw: dict[str, Any]) -> None:
        raw["routes"][0]["upstream"] = f"http://127.0.0.1:{port}"

    gw = await make_gateway(tweak=broken)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port("sign"))
    request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    writer.write(request + request)  # a pipelined second request must not get a reply on this connection
    await writer.drain()
    received = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 5):
        received += chunk
    writer.close()
    server.close()
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"a" * 10)
    assert received.count(b"HTTP/1.1") == 1  # no second response written into the first one's body


@pytest.mark.parametrize(
    "target",
    [
        b"/api/../admin",
        b"/api/./x",
        b"/api/%2e%2e/admin",
        b"/api/%2E%2E/admin",
        b"/api/..%2fadmin",
        b"/api%2fadmin",
        b"/api%5cadmin",
        b"/%61pi/x",  # needless encoding of an unreserved character: would dodge a prefix match
        b"//evil.example/x",
        b"/api//x",
        b"/api/%zz",
        b"/%68ealthz",
        b"/api/..;/admin",  # Tomcat and Spring drop ";" parameters, then resolve ".."
        b"/api/..;jsessionid=x/admin",
        b"/api/.;/x",
        b"/a%00b",  # an encoded NUL ends the path early in C-string upstreams
    ],
)
async def test_non_canonical_paths_are_refused_before_routing(
    make_gateway: GatewayFactory, upstream: Recorder, target: bytes
) -> None:
    gw = await make_gateway()
    for listener in ("sign", "verify"):
        reply = await raw_http(
            gw.port(listener), b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        assert b"non_canonical_path" in reply
    assert upstream.received == []


async def test_canonical_odd_paths_still_pass(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    for target in ("/a/b/", "/a%20b/c?x=..%2f&y=//", "/caf%C3%A9", "/a/.well-known/x", "/a/..b/c..", "/a/b;v=1/", "/"):
        status, _, _ = await post(URL_JOIN(gw, target), method="GET")
        assert status == 200, target
    assert upstream.received[1].raw_path == "/up/a%20b/c?x=..%2f&y=//"  # the query is not a path


def URL_JOIN(gw: Gateway, target: str) -> Any:
    from yarl import URL

    return URL(str(gw.url("sign", "/")).rstrip("/") + target, encoded=True)


async def test_failures_log_the_claimed_key_id(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    sink = io.StringIO()
    gw.runtime.access_log = AccessLog(sink=sink, enabled=True)
    gw.keys["key-v9"] = random_secret()
    await post(gw.url("verify", "/hooks/pay?id=7"), data=b'{"amount": 42}', headers=lib_signed_headers(gw, "key-v9"))
    headers = lib_signed_headers(gw, "key-v1")
    await post(gw.url("verify", "/hooks/pay?id=7"), method="PUT", data=b'{"amount": 42}', headers=headers)
    await post(gw.url("verify", "/readyz"), method="GET", headers={"X-Request-Id": "probe-1"})
    gw.runtime.access_log.flush()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    reasons = [(r["reason"], r["key_id"]) for r in lines[:2]]
    assert reasons == [("unknown_key", "key-v9"), ("signature_mismatch", "key-v1")]
    assert len(lines[1]["base_sha256"]) == 64
    assert lines[2]["request_id"] == "probe-1" and lines[2]["outcome"] == "health"
    assert {r["msg"] for r in lines} == {"request"} and all(r["ts"].endswith("Z") for r in lines)
    assert lines[0]["request_id"] != lines[1]["request_id"]  # generated ids are distinct


async def test_key_id_header_spoofed_with_underscores_is_dropped(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    gw = await make_gateway()
    headers = lib_signed_headers(gw, "key-v1", extra={"X-Gateway-Key_Id": "key-admin", "x_gateway_key_id": "k2"})
    assert (await post(gw.url("verify", "/hooks/pay?id=7"), data=b'{"amount": 42}', headers=headers))[0] == 200
    names = [n.lower().replace("_", "-") for n in upstream.received[0].headers]
    assert names.count("x-gateway-key-id") == 1
    assert upstream.received[0].headers["X-Gateway-Key-Id"] == "key-v1"


async def test_problem_details_name_no_internal_configuration(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(keys={})
    _, doc, _ = await post(gw.url("sign", "/x"))
    assert doc["reason"] == "keyring_unavailable" and "'ring'" not in doc["detail"]
    gw2 = await make_gateway(tweak=lambda raw: raw["routes"][0].update(path_prefix="/api"))
    _, doc, _ = await post(gw2.url("sign", "/nope"))
    assert doc["reason"] == "no_route" and "'sign'" not in doc["detail"]


async def test_readyz_details_only_for_loopback_callers(make_gateway: GatewayFactory) -> None:
    from gateway.proxy.ops import _health

    gw = await make_gateway()
    public = json.loads(_health(gw.runtime, "/readyz", "id", detailed=False).text or "")
    assert public == {"status": "ready", "draining": False}
    local = json.loads(_health(gw.runtime, "/readyz", "id", detailed=True).text or "")
    assert "ring" in local["keyrings"]


async def test_readyz_is_503_while_draining(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    assert (await post(gw.url("sign", "/readyz"), method="GET"))[0] == 200
    gw.runtime.draining = True  # what serve sets on SIGTERM, before closing the listeners
    status, doc, _ = await post(gw.url("sign", "/readyz"), method="GET")
    assert (status, doc["draining"]) == (503, True)


async def test_replay_is_refused_up_to_the_last_second_of_the_window(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    gw = await make_gateway()
    url = gw.url("verify", "/hooks/pay?id=7")
    created = int(clock.now)
    clock.now = created  # the window is inclusive: created + 300 is still fresh
    headers = lib_signed_headers(gw, "key-v1", created=created)
    assert (await post(url, data=b'{"amount": 42}', headers=headers))[0] == 200
    clock.now = created + 300
    assert (await post(url, data=b'{"amount": 42}', headers=headers))[1]["reason"] == "replayed"
    clock.now = created + 300.001  # from here on the window itself refuses it
    assert (await post(url, data=b'{"amount": 42}', headers=headers))[1]["reason"] == "stale"


async def test_verify_route_can_pin_the_authorities_it_serves(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    def pinned(raw: dict[str, Any]) -> None:
        raw["routes"][1]["authorities"] = ["hooks.example.com"]

    gw = await make_gateway(tweak=pinned)
    # validly signed, but for this listener's own address, which the route does not serve
    headers = lib_signed_headers(gw, "key-v1")
    status, doc, _ = await post(gw.url("verify", "/hooks/pay?id=7"), data=b'{"amount": 42}', headers=headers)
    assert (status, doc["reason"]) == (421, "misdirected")
    assert upstream.received == []


async def test_small_answers_are_relayed_byte_for_byte_with_their_headers(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    import gzip

    from aiohttp import web

    compressed = gzip.compress(b'{"hello": "world"}' * 50)

    async def answer(request: web.Request) -> web.Response:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "999", "Content-Type": "text/plain"})
        return web.Response(
            status=201,
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "ETag": '"v1"'},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(app, host="127.0.0.1")
    gw = await make_gateway(tweak=lambda raw: raw["routes"][0].update(upstream=str(server.make_url("")).rstrip("/")))
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(gw.url("sign", "/x")) as resp:
            assert resp.status == 201
            assert await resp.read() == compressed
            assert resp.headers["Content-Encoding"] == "gzip" and resp.headers["ETag"] == '"v1"'
            assert resp.headers.getall("Content-Length") == [str(len(compressed))]
            assert resp.headers["Content-Type"] == "application/json"
        async with session.head(gw.url("sign", "/x")) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == "999"  # HEAD keeps the upstream's


def test_nonces_are_unique_unpredictable_shaped_and_refilled() -> None:
    from gateway.proxy.handlers import NoncePool

    pool = NoncePool(batch=4)
    nonces = [pool.next() for _ in range(1000)]  # crosses 250 refills
    assert len(set(nonces)) == 1000
    assert all(
        len(n) == 22 and set(n) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for n in nonces
    )


class _BrokenSink:
    def write(self, text: str) -> int:
        raise BrokenPipeError("log collector went away")

    def flush(self) -> None:
        raise BrokenPipeError("log collector went away")


async def test_a_broken_log_sink_never_fails_requests(make_gateway: GatewayFactory, upstream: Recorder) -> None:
    gw = await make_gateway()
    gw.runtime.access_log = AccessLog(sink=_BrokenSink(), enabled=True)
    statuses = [(await post(gw.url("verify", "/x")))[0] for _ in range(70)]  # past the 64-line batch
    assert set(statuses) == {401}
    gw.runtime.access_log.flush()
    assert gw.runtime.access_log.dropped == 70  # counted, not kept: memory stays bounded
