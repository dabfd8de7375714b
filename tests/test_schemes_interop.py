"""The webhook schemes over a real HTTP exchange: what each sender's own library signs
(``standardwebhooks``, ``stripe``, ``slack_sdk``; GitHub's documented algorithm) verifies at a
verify route, during a rotation overlap with either key, and is forwarded with the verified key id;
what fails gets 401 problem+json with its reason code. And the other way: what a Standard
Webhooks sign route emits verifies with ``standardwebhooks``' ``Webhook.verify``.

Keys here are ≥ 32 bytes, as a keyring requires; the senders' short published vectors are
checked against the schemes' pure functions in test_schemes_vectors.py."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
from typing import Any

import pytest
import standardwebhooks
import stripe
from slack_sdk.signature import SignatureVerifier

from tests.conftest import Gateway, GatewayFactory, Recorder
from tests.helpers import FakeClock, random_secret
from tests.support import post

BODY = b'{"type":  "payment.succeeded", "amount": 42}'  # odd spacing: the MAC is over these bytes


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def route(scheme: str, **settings: Any) -> Any:
    def tweak(raw: dict[str, Any]) -> None:
        raw["routes"][1].update(scheme=scheme, **settings)

    return tweak


async def send(gw: Gateway, headers: dict[str, str], body: bytes = BODY) -> tuple[int, str]:
    status, doc, _ = await post(gw.url("verify", "/hooks/in"), data=body, headers=headers)
    return status, doc.get("reason", "")


def sw_headers(secret: str, now: float, body: bytes = BODY, msg_id: str | None = None) -> dict[str, str]:
    msg_id = msg_id or "msg_" + random_secret()[:20]
    when = datetime.datetime.fromtimestamp(int(now), tz=datetime.UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(now)), "webhook-signature": signature}


# -- Standard Webhooks -------------------------------------------------------------------------


async def test_standard_webhooks_library_signature_verifies_with_either_key_of_an_overlap(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec(), "key-v2": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("standard-webhooks"))
    for key_id in ("key-v1", "key-v2"):
        assert await send(gw, sw_headers(keys[key_id], clock.now)) == (200, "")
        received = upstream.received[-1]
        assert received.body == BODY
        assert received.headers["X-Gateway-Key-Id"] == key_id
        assert "webhook-signature" not in received.headers


async def test_standard_webhooks_header_with_several_signatures_passes_when_one_matches(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("standard-webhooks"))
    headers = sw_headers(keys["key-v1"], clock.now)
    foreign = sw_headers(whsec(), clock.now, msg_id=headers["webhook-id"])["webhook-signature"]
    headers["webhook-signature"] = f"v1a,c2lnbmVk {foreign} {headers['webhook-signature']}"
    assert await send(gw, headers) == (200, "")
    headers = dict(headers, **{"webhook-id": "msg_other"})
    headers["webhook-signature"] = foreign
    assert await send(gw, headers) == (401, "signature_mismatch")


async def test_standard_webhooks_refuses_replays_stale_future_and_tampered_bodies(
    make_gateway: GatewayFactory, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec(), "key-v2": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("standard-webhooks", window_past_seconds=300))
    headers = sw_headers(keys["key-v1"], clock.now)
    assert await send(gw, headers) == (200, "")
    assert await send(gw, headers) == (401, "replayed")
    # the message id is the token whichever key verifies: a copy signed with another key is a replay
    resigned = sw_headers(keys["key-v2"], clock.now, msg_id=headers["webhook-id"])
    assert await send(gw, resigned) == (401, "replayed")
    assert await send(gw, sw_headers(keys["key-v1"], clock.now - 301)) == (401, "stale")
    assert await send(gw, sw_headers(keys["key-v1"], clock.now + 31)) == (401, "future")
    assert await send(gw, sw_headers(keys["key-v1"], clock.now), body=BODY.replace(b"  ", b" ")) == (
        401,
        "signature_mismatch",
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-signature": "v1,abc  v1,def"}, "malformed_signature"),
        ({"webhook-signature": "v1abc"}, "malformed_signature"),
        ({"webhook-signature": "v2,c2ln"}, "unsupported_algorithm"),
        ({"webhook-signature": ""}, "malformed_signature"),
        ({"webhook-timestamp": "12.5"}, "malformed_signature"),
        ({"webhook-timestamp": "9" * 40}, "malformed_signature"),
        ({"webhook-timestamp": "-5"}, "malformed_signature"),
        ({"webhook-id": ""}, "malformed_signature"),
    ],
)
async def test_standard_webhooks_malformed_headers_get_401_with_a_reason(
    make_gateway: GatewayFactory, clock: FakeClock, change: dict[str, str], reason: str
) -> None:
    keys = {"key-v1": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("standard-webhooks"))
    headers = sw_headers(keys["key-v1"], clock.now) | change
    status, doc, response_headers = await post(gw.url("verify", "/hooks/in"), data=BODY, headers=headers)
    assert (status, doc["reason"]) == (401, reason)
    assert response_headers["Content-Type"].startswith("application/problem+json")


async def test_standard_webhooks_mac_is_over_raw_bytes_even_when_not_utf8(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("standard-webhooks"))
    body = b"\xff\xfe not utf-8 \x00"
    material = base64.b64decode(keys["key-v1"][len("whsec_") :])
    ts = str(int(clock.now))
    mac = hmac.new(material, b"msg_raw." + ts.encode() + b"." + body, hashlib.sha256).digest()
    signature = "v1," + base64.b64encode(mac).decode()
    headers = {"webhook-id": "msg_raw", "webhook-timestamp": ts, "webhook-signature": signature}
    assert await send(gw, headers, body=body) == (200, "")
    assert upstream.received[-1].body == body


async def test_standard_webhooks_sign_route_output_verifies_with_the_library_for_either_key(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec(), "key-v2": whsec()}

    def tweak(raw: dict[str, Any]) -> None:
        raw["routes"][0]["scheme"] = "standard-webhooks"
        raw["routes"][1]["scheme"] = "standard-webhooks"

    gw = await make_gateway(keys=keys, tweak=tweak)
    forged = {"webhook-signature": "v1,Zm9yZ2Vk", "Content-Type": "application/json"}
    status, _, _ = await post(gw.url("sign", "/cb"), data=BODY, headers=forged)
    assert status == 200
    received = upstream.received[-1]
    headers = {k: received.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    assert len(headers["webhook-signature"].split(" ")) == 2  # one per active key; the client's copy dropped
    assert "Zm9yZ2Vk" not in headers["webhook-signature"]
    # the library checks freshness against the real clock: the gateway's clock is the test's
    assert abs(int(headers["webhook-timestamp"]) - clock.now) < 1
    for secret in keys.values():  # a receiver holding only the old or only the new key accepts
        standardwebhooks.Webhook(secret).verify(received.body, headers, json_parse=False)
    assert received.body == BODY


async def test_standard_webhooks_sign_route_can_sign_with_the_signing_key_only(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    keys = {"key-v1": whsec(), "key-v2": whsec()}

    def tweak(raw: dict[str, Any]) -> None:
        raw["routes"][0].update(scheme="standard-webhooks", sign_with="signing-key")

    gw = await make_gateway(keys=keys, tweak=tweak)
    status, _, _ = await post(gw.url("sign", "/cb"), data=BODY)
    assert status == 200
    received = upstream.received[-1]
    headers = {k: received.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    assert " " not in headers["webhook-signature"]
    standardwebhooks.Webhook(keys["key-v2"]).verify(received.body, headers, json_parse=False)  # the last: signing
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(keys["key-v1"]).verify(received.body, headers, json_parse=False)


# -- GitHub ----------------------------------------------------------------------------------


def github_headers(secret: str, body: bytes = BODY, delivery: str | None = None) -> dict[str, str]:
    """What GitHub sends (its documented algorithm: HMAC-SHA256 of the body, hex, "sha256=")."""
    headers = {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers


async def test_github_signature_verifies_with_either_key_and_delivery_ids_are_not_replayed(
    make_gateway: GatewayFactory, upstream: Recorder
) -> None:
    keys = {"key-v1": random_secret(), "key-v2": random_secret()}
    gw = await make_gateway(keys=keys, tweak=route("github"))
    assert await send(gw, github_headers(keys["key-v1"], delivery="d-1")) == (200, "")
    assert upstream.received[-1].headers["X-Gateway-Key-Id"] == "key-v1"
    assert await send(gw, github_headers(keys["key-v2"], delivery="d-2")) == (200, "")
    assert upstream.received[-1].headers["X-Gateway-Key-Id"] == "key-v2"
    assert await send(gw, github_headers(keys["key-v2"], delivery="d-2")) == (401, "replayed")
    assert await send(gw, github_headers(keys["key-v2"])) == (200, "")  # no delivery id: the signature
    assert await send(gw, github_headers(keys["key-v2"])) == (401, "replayed")
    assert await send(gw, github_headers(random_secret(), delivery="d-3")) == (401, "signature_mismatch")
    assert await send(gw, {"X-Hub-Signature-256": "sha1=abc"}) == (401, "unsupported_algorithm")
    assert await send(gw, {}) == (401, "missing_signature")


async def test_github_route_can_require_the_delivery_id(make_gateway: GatewayFactory) -> None:
    keys = {"key-v1": random_secret()}
    gw = await make_gateway(keys=keys, tweak=route("github", require_delivery_id=True))
    assert await send(gw, github_headers(keys["key-v1"])) == (401, "missing_parameter")
    assert await send(gw, github_headers(keys["key-v1"], delivery="d-1")) == (200, "")


# -- Stripe ----------------------------------------------------------------------------------


async def test_stripe_library_signature_verifies_with_either_key_and_several_v1_values(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec(), "key-v2": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("stripe"))
    payload = BODY.decode()
    for key_id in ("key-v1", "key-v2"):
        header = stripe.WebhookSignature.generate_signature_header(payload, keys[key_id], timestamp=int(clock.now))
        assert await send(gw, {"Stripe-Signature": header}) == (200, "")
        assert upstream.received[-1].headers["X-Gateway-Key-Id"] == key_id
        assert upstream.received[-1].body == BODY
    # Stripe, during a secret roll, sends one v1 per secret
    t = int(clock.now) - 1
    old = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", whsec())
    new = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", keys["key-v2"])
    assert await send(gw, {"Stripe-Signature": f"t={t},v1={old},v1={new},v0={old}"}) == (200, "")
    assert await send(gw, {"Stripe-Signature": f"t={t},v1={old},v1={new},v0={old}"}) == (401, "replayed")
    assert await send(gw, {"Stripe-Signature": f"t={t},v1={old}"}) == (401, "signature_mismatch")
    stale = stripe.WebhookSignature.generate_signature_header(payload, keys["key-v1"], timestamp=t - 300)
    assert await send(gw, {"Stripe-Signature": stale}) == (401, "stale")
    for bad in ("t=1,v1", f"v1={new}", f"t=1,t=2,v1={new}", f"t=x,v1={new}", f"t={t},v0={old}"):
        assert (await send(gw, {"Stripe-Signature": bad}))[0] == 401


# -- Slack -----------------------------------------------------------------------------------


async def test_slack_sdk_signature_verifies_with_either_key(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": random_secret(), "key-v2": random_secret()}
    gw = await make_gateway(keys=keys, tweak=route("slack"))
    ts = str(int(clock.now))
    for key_id in ("key-v1", "key-v2"):
        signature = SignatureVerifier(keys[key_id]).generate_signature(timestamp=ts, body=BODY)
        assert signature is not None
        headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}
        assert await send(gw, headers) == (200, "")
        assert upstream.received[-1].headers["X-Gateway-Key-Id"] == key_id
        assert await send(gw, headers) == (401, "replayed")
    old = str(int(clock.now) - 301)
    signature = SignatureVerifier(keys["key-v1"]).generate_signature(timestamp=old, body=BODY)
    assert await send(gw, {"X-Slack-Request-Timestamp": old, "X-Slack-Signature": str(signature)}) == (401, "stale")
    assert await send(gw, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v1=00"}) == (
        401,
        "unsupported_algorithm",
    )
    assert await send(gw, {"X-Slack-Signature": str(signature)}) == (401, "missing_signature")


async def test_keep_signature_headers_forwards_the_scheme_s_headers(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    keys = {"key-v1": whsec()}
    gw = await make_gateway(keys=keys, tweak=route("standard-webhooks", keep_signature_headers=True))
    headers = sw_headers(keys["key-v1"], clock.now)
    assert await send(gw, headers) == (200, "")
    assert upstream.received[-1].headers["webhook-signature"] == headers["webhook-signature"]
