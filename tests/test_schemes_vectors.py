"""Each webhook scheme's pure functions against its sender's published example and library.

The published secrets are shorter than the 32 bytes a keyring accepts (the minimum is a rule of
keyring documents, ``gateway.keys.formats``), so these vectors go through the schemes' pure
functions and verifiers with a Keyring built here; every test through the gateway uses ≥ 32-byte
keys (test_schemes_interop.py)."""

from __future__ import annotations

import base64
import datetime

import pytest
import standardwebhooks
import stripe as stripe_lib
from multidict import CIMultiDict
from slack_sdk.signature import SignatureVerifier

from gateway.errors import Reason, VerificationError
from gateway.keys.model import Key, Keyring, KeyState
from gateway.signing import github, slack, standard_webhooks, stripe
from gateway.signing.scheme import RequestView

SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = 1614265330
SW_PAYLOAD = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_PAYLOAD = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def keyring(*materials: bytes, secret: str = "") -> Keyring:
    keys = tuple(Key(f"k{i}", m, KeyState.PRIMARY, secret=secret) for i, m in enumerate(materials))
    return Keyring("vectors", keys, keys[-1].id, "flat")


def view(headers: dict[str, str]) -> RequestView:
    return RequestView("POST", "hooks.example", "/in", None, CIMultiDict(headers))


def test_standard_webhooks_published_vector() -> None:
    material = base64.b64decode(SW_SECRET[len("whsec_") :])
    assert standard_webhooks.signature(material, SW_ID, SW_TIMESTAMP, SW_PAYLOAD) == SW_SIGNATURE
    headers = {"webhook-id": SW_ID, "webhook-timestamp": str(SW_TIMESTAMP), "webhook-signature": SW_SIGNATURE}
    verifier = standard_webhooks.StandardWebhooksVerifier(standard_webhooks.StandardWebhooksSettings())
    ring = keyring(b"\x01" * 32, material)
    verified = verifier.check_headers(view(headers), ring, SW_TIMESTAMP + 10).check_body(SW_PAYLOAD)
    assert (verified.key_id, verified.replay_token, verified.replay_until) == ("k1", SW_ID, SW_TIMESTAMP + 330)
    with pytest.raises(VerificationError) as caught:
        verifier.check_headers(view(headers), ring, SW_TIMESTAMP).check_body(SW_PAYLOAD + b" ")
    assert caught.value.reason is Reason.SIGNATURE_MISMATCH
    # and the library itself agrees with the vector
    when = datetime.datetime.fromtimestamp(SW_TIMESTAMP, tz=datetime.UTC)
    assert standardwebhooks.Webhook(SW_SECRET).sign(SW_ID, when, SW_PAYLOAD.decode()) == SW_SIGNATURE


def test_github_documented_example() -> None:
    assert github.signature(GITHUB_SECRET, GITHUB_PAYLOAD) == GITHUB_SIGNATURE
    verifier = github.GitHubVerifier(github.GitHubSettings())
    pending = verifier.check_headers(view({"X-Hub-Signature-256": GITHUB_SIGNATURE}), keyring(GITHUB_SECRET), 1000.0)
    verified = pending.check_body(GITHUB_PAYLOAD)
    assert verified.key_id == "k0" and verified.replay_until == 1000.0 + 86400
    assert verified.replay_token == GITHUB_SIGNATURE.removeprefix("sha256=")


def test_stripe_mac_is_the_library_s_over_the_raw_whsec_string() -> None:
    secret = "whsec_" + base64.b64encode(b"\x07" * 32).decode()  # used as its UTF-8 bytes, not decoded
    expected = stripe_lib.WebhookSignature._compute_signature("1700000000.{}", secret)
    assert stripe.mac(secret.encode(), 1700000000, b"{}").hex() == expected
    ring = keyring(base64.b64decode(secret[6:]), secret=secret)
    header = stripe_lib.WebhookSignature.generate_signature_header("{}", secret, timestamp=1700000000)
    verifier = stripe.StripeVerifier(stripe.StripeSettings())
    verified = verifier.check_headers(view({"Stripe-Signature": header}), ring, 1700000001).check_body(b"{}")
    assert verified.replay_token == expected and verified.replay_until == 1700000000 + 330


def test_slack_mac_is_the_sdk_s() -> None:
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    expected = SignatureVerifier(secret).generate_signature(timestamp="1531420618", body=b"token=x&team_id=T1")
    assert "v0=" + slack.mac(secret.encode(), 1531420618, b"token=x&team_id=T1").hex() == expected
