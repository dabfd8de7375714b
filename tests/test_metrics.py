"""Metrics (gateway/metrics.py, /metrics in gateway/proxy/ops.py): what a request adds, that label
values stay bounded, that batching gives the same exposition as prometheus-client's own
observe(), and who may read them."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway import config as config_mod
from gateway.errors import ConfigError
from gateway.metrics import Recorder
from gateway.proxy.ops import operator_check
from tests.conftest import GatewayFactory
from tests.conftest import Recorder as Upstream
from tests.support import lib_signed_headers, post


def test_batched_observations_expose_exactly_what_observe_would() -> None:
    values = [0.0001, 0.0005, 0.0007, 0.003, 0.2, 0.25, 7.0, 31.0, 1e9, 0.0]
    direct, batched = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("lat_seconds", "d", ["r"], registry=direct, buckets=(0.0005, 0.25, 30.0))
    h2 = Histogram("lat_seconds", "d", ["r"], registry=batched, buckets=(0.0005, 0.25, 30.0))
    c1 = Counter("reqs", "d", ["r"], registry=direct)
    c2 = Counter("reqs", "d", ["r"], registry=batched)
    recorder = Recorder()
    for value in values:
        h1.labels("a").observe(value)
        c1.labels("a").inc()
        recorder.observe(h2, ("a",), value)
        recorder.count(c2, ("a",))
    recorder.flush()
    recorder.flush()  # a second flush adds nothing

    def strip_created(text: bytes) -> str:
        return "\n".join(line for line in text.decode().splitlines() if "_created" not in line)

    assert strip_created(generate_latest(batched)) == strip_created(generate_latest(direct))


def _series(text: str, name: str, **labels: str) -> float:
    """The value of one series (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _scrape(gw: object) -> str:
    status, doc, headers = await post(gw.url("verify", "/metrics"), method="GET")  # type: ignore[attr-defined]
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return str(doc["_text"])


async def test_a_request_is_counted_by_route_outcome_reason_and_matched_key(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway()
    before = await _scrape(gw)
    headers = lib_signed_headers(gw, "key-v2")
    assert (await post(gw.url("verify", "/hooks/pay?id=7"), data=b'{"amount": 42}', headers=headers))[0] == 200
    assert (await post(gw.url("verify", "/hooks/pay?id=7"), data=b"{}"))[0] == 401
    after = await _scrape(gw)

    def delta(name: str, **labels: str) -> float:
        return _series(after, name, **labels) - _series(before, name, **labels)

    assert delta("hmac_gateway_verifications_total", route="in", keyring="ring", key_id="key-v2") == 1
    assert delta("hmac_gateway_verification_failures_total", route="in", reason="missing_signature") == 1
    assert delta("hmac_gateway_requests_total", listener="verify", route="in", outcome="forwarded", reason="") == 1
    assert delta("hmac_gateway_upstream_duration_seconds_count", route="in") == 1
    assert delta("hmac_gateway_request_duration_seconds_count", listener="verify", route="in") == 2
    assert _series(after, "hmac_gateway_keyring_age_seconds", keyring="ring") >= 0
    assert _series(after, "hmac_gateway_keyring_stale", keyring="ring") == 0
    assert "hmac_gateway_replay_store_entries" in after
    assert gw.keys["key-v2"] not in after  # key ids only, never a secret


async def test_made_up_key_ids_never_become_label_values(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway()
    junk = [f"junk-{secrets.token_hex(6)}" for _ in range(20)]
    for key_id in junk:
        headers = lib_signed_headers(gw, "key-v1")
        headers["Signature-Input"] = headers["Signature-Input"].replace('keyid="key-v1"', f'keyid="{key_id}"')
        assert (await post(gw.url("verify", "/hooks/pay?id=7"), data=b'{"amount": 42}', headers=headers))[0] == 401
    text = await _scrape(gw)
    assert not any(key_id in text for key_id in junk)
    assert _series(text, "hmac_gateway_verification_failures_total", route="in", reason="unknown_key") >= 20


def test_only_operators_read_metrics_and_readiness_details(tmp_path: Path) -> None:
    listener = config_mod.ListenerConfig(name="l", ops_allowed_networks=("10.0.0.0/8", "fd00::/8"))
    is_operator = operator_check(listener)
    assert is_operator("127.0.0.1") and is_operator("::1") and is_operator("127.8.9.10")
    assert is_operator("10.1.2.3") and is_operator("fd00::1")
    assert not is_operator("192.168.1.10") and not is_operator("11.0.0.1") and not is_operator("2001:db8::1")
    assert not is_operator(None) and not is_operator("") and not is_operator("/run/gateway.sock")
    assert not operator_check(config_mod.ListenerConfig(name="l"))("10.1.2.3")


def test_a_bad_operator_network_is_a_config_error(tmp_path: Path) -> None:
    raw = {
        "keyrings": {"r": {"path": "r.json"}},
        "listeners": {"l": {"port": 0, "ops_allowed_networks": ["10.0.0.1/8", "nonsense"]}},
        "routes": [{"name": "x", "listener": "l", "mode": "verify", "upstream": "http://127.0.0.1:9", "keyring": "r"}],
    }
    with pytest.raises(ConfigError) as info:
        config_mod.parse(raw, base_dir=tmp_path)
    assert "[listeners.l].ops_allowed_networks: '10.0.0.1/8' is not a network" in str(info.value)
    assert "'nonsense' is not a network" in str(info.value)
