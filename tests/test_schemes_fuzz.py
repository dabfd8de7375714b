"""Fuzzing the webhook schemes: arbitrary header values and bodies only ever get 4xx (a reason
code, never a 500 or a traceback) -- on the pure verifiers (many examples) and over real HTTP
at a running gateway (fewer, bounded), with raw bytes on the socket."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import VerificationError
from gateway.keys.model import Key, Keyring, KeyState
from gateway.signing import registry
from gateway.signing.scheme import RequestView
from tests.conftest import write_keyring
from tests.support import LiveGateway, exchange, live_gateway

NOW = 1_700_000_000
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
RING = Keyring("fuzz", (Key("k", bytes(range(32)), KeyState.PRIMARY, secret=SECRET),), "k", "flat")
SCHEME_HEADERS = {
    "standard-webhooks": ("webhook-id", "webhook-timestamp", "webhook-signature"),
    "github": ("X-Hub-Signature-256", "X-GitHub-Delivery"),
    "stripe": ("Stripe-Signature",),
    "slack": ("X-Slack-Signature", "X-Slack-Request-Timestamp"),
}
DEFAULTS: dict[str, Any] = {
    "standard-webhooks": registry.SCHEMES["standard-webhooks"].settings_type(),
    "github": registry.SCHEMES["github"].settings_type(),
    "stripe": registry.SCHEMES["stripe"].settings_type(),
    "slack": registry.SCHEMES["slack"].settings_type(),
}

# values that look almost right, and arbitrary text (surrogate-escaped bytes as aiohttp gives them)
near = st.sampled_from(
    [str(NOW), f"t={NOW},v1=" + "0" * 64, "v1," + "A" * 44, "v0=" + "f" * 64, "sha256=" + "a" * 64, "msg_1", ""]
)
value = st.one_of(
    near, st.text(max_size=80), st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
)


@pytest.mark.parametrize("scheme", sorted(SCHEME_HEADERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_pure_verifiers_only_raise_verification_errors(scheme: str, data: st.DataObject) -> None:
    names = SCHEME_HEADERS[scheme]
    headers: CIMultiDict[str] = CIMultiDict()
    for name in names:
        for _ in range(data.draw(st.integers(0, 2))):
            headers.add(name, data.draw(value))
    body = data.draw(st.binary(max_size=64))
    verifier = registry.verifier_for(scheme, DEFAULTS[scheme])
    request = RequestView("POST", "h", "/", None, headers)
    try:
        verifier.check_headers(request, RING, NOW).check_body(body)
    except VerificationError as exc:
        assert exc.reason.status == 401


# -- over HTTP -------------------------------------------------------------------------------

header_bytes = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """One running gateway with a verify route per scheme (prefix /<scheme>)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    write_keyring(tmp / "ring.json", {"k": SECRET})

    def make_raw(upstream: str) -> dict[str, Any]:
        routes = [
            {
                "name": scheme,
                "listener": "verify",
                "mode": "verify",
                "upstream": upstream,
                "keyring": "ring",
                "path_prefix": f"/{scheme}",
                "scheme": scheme,
            }
            for scheme in SCHEME_HEADERS
        ]
        return {
            "keyrings": {"ring": {"path": str(tmp / "ring.json")}},
            "listeners": {"verify": {"port": 0}},
            "routes": routes,
        }

    with live_gateway(make_raw, tmp) as live:
        yield live


@pytest.mark.parametrize("scheme", sorted(SCHEME_HEADERS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_header_bytes_and_bodies_get_4xx_over_http(
    gateway: LiveGateway, scheme: str, data: st.DataObject
) -> None:
    lines = [f"POST /{scheme}/in HTTP/1.1".encode(), b"Host: hooks.example", b"Connection: close"]
    for name in SCHEME_HEADERS[scheme]:
        if data.draw(st.booleans()):
            fresh = data.draw(st.sampled_from([b"", str(int(time.time())).encode()]))
            lines.append(name.encode() + b": " + (fresh or data.draw(header_bytes)))
    body = data.draw(st.binary(max_size=200))
    lines.append(b"Content-Length: " + str(len(body)).encode())
    reply = exchange(gateway.ports["verify"], b"\r\n".join(lines) + b"\r\n\r\n" + body)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:300]
    if status == 401:
        doc = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert doc["reason"] and "Traceback" not in json.dumps(doc)
    assert not gateway.errors.records, [r.getMessage() for r in gateway.errors.records]


def test_every_webhook_scheme_is_fuzzed() -> None:
    assert set(SCHEME_HEADERS) == set(registry.SCHEMES) - {"rfc9421"}
