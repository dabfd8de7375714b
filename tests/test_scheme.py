"""The scheme seam (gateway/signing/scheme.py, registry.py) and what a verify route does with it:
the replay entry lives until the scheme's ``replay_until``, whichever instance's clock wrote it."""

from __future__ import annotations

import datetime
import json

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway import config as config_mod
from gateway.replay.memory import MemoryReplayStore
from gateway.signing import registry, rfc9421
from gateway.signing.scheme import Scheme
from tests.conftest import Gateway, GatewayFactory, Recorder
from tests.helpers import REQUIRED, FakeClock, lib_message, lib_signer, random_secret


def test_registry_maps_scheme_names_to_verifiers() -> None:
    assert set(registry.SCHEMES) == {"rfc9421", "standard-webhooks", "github", "stripe", "slack"}
    assert all(isinstance(s, Scheme) and s.name == name for name, s in registry.SCHEMES.items())
    policy = rfc9421.VerifyPolicy(window_past=60)
    verifier = registry.verifier_for("rfc9421", policy)
    assert isinstance(verifier, rfc9421.Rfc9421Verifier) and verifier.policy is policy
    with pytest.raises(KeyError):
        registry.verifier_for("aws-sigv4", policy)
    with pytest.raises(TypeError, match="VerifyPolicy"):
        registry.verifier_for("rfc9421", object())
    with pytest.raises(TypeError, match="GitHubSettings"):
        registry.verifier_for("github", policy)


def test_config_accepts_exactly_the_registered_schemes() -> None:
    assert tuple(config_mod.SCHEMES) == tuple(registry.SCHEMES)


# -- instances on different clocks, one replay store (issue 9 item 8) -------------------------


def signed_headers(gw: Gateway, host: str, created: float) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict({"Host": host, "Content-Type": "application/json"})
    lib_signer({k: v.encode() for k, v in gw.keys.items()}).sign(
        lib_message("POST", f"http://{host}/hooks/pay?id=7", headers),
        key_id="key-v1",
        created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC),
        nonce=random_secret()[:24],
        covered_component_ids=REQUIRED,
        body=BODY,
    )
    return headers


BODY = b'{"amount": 42}'


async def post(gw: Gateway, headers: CIMultiDict[str]) -> tuple[int, str]:
    url = gw.url("verify", "/hooks/pay?id=7")
    async with aiohttp.ClientSession() as session, session.post(url, data=BODY, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text).get("reason", "") if resp.status != 200 else ""


async def test_replay_is_refused_on_a_lagging_instance_sharing_the_store(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    """One instance's clock runs 25 s ahead, another's 4 s behind (29 s apart, inside the 30 s
    future window). The fast one accepts a request first; the slow one must refuse the replay
    for as long as its own window still takes the signature."""
    store_clock = clock  # the shared store's own clock (Redis expires by its server's time)
    store = MemoryReplayStore(clock=store_clock)
    ahead, behind = FakeClock(store_clock.now + 25), FakeClock(store_clock.now - 4)
    gw_ahead = await make_gateway(own_clock=ahead, replay=store)
    gw_behind = await make_gateway(keys=gw_ahead.keys, own_clock=behind, replay=store)
    created = int(store_clock.now)
    headers = signed_headers(gw_ahead, "hooks.example", created)

    assert await post(gw_ahead, headers) == (200, "")
    assert await post(gw_behind, headers) == (401, "replayed")

    def advance(seconds: float) -> None:
        for c in (store_clock, ahead, behind):
            c.advance(seconds)

    advance(290)  # the fast instance's own window says stale; the slow one's still says fresh
    assert await post(gw_ahead, headers) == (401, "stale")
    assert await post(gw_behind, headers) == (401, "replayed")
    advance(created + 300 - behind.now)  # the slow instance's last fresh second
    assert await post(gw_behind, headers) == (401, "replayed")
    advance(1)
    assert await post(gw_behind, headers) == (401, "stale")
    assert len(upstream.received) == 1


async def test_replay_ttl_is_replay_until_minus_now(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    remembered: list[float] = []

    class Recording(MemoryReplayStore):
        async def remember(self, key: bytes, ttl: float) -> bool:
            remembered.append(ttl)
            return await super().remember(key, ttl)

    gw = await make_gateway(replay=Recording(clock=clock))
    created = int(clock.now)
    clock.now = created + 100.5
    assert await post(gw, signed_headers(gw, "hooks.example", created)) == (200, "")
    assert remembered == [300 + 30 - 100.5]


def test_public_names_stay_importable_from_gateway() -> None:
    import gateway

    before = {"Component", "RequestView", "VerifyPolicy", "sign", "signature_base", "verify", "content_digest"}
    seam = {"Verified", "SignatureFailure", "Verifier", "BodyCheck", "Scheme", "SCHEMES", "verifier_for"}
    assert before | seam <= set(gateway.__all__)
    assert all(hasattr(gateway, name) for name in gateway.__all__)


def test_signing_core_is_pure_small_and_acyclic() -> None:
    """gateway/signing imports no I/O, keeps each module under ~350 lines, and every module
    imports alone (a cycle would fail one of these fresh imports)."""
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(registry.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert {"scheme", "registry", "rfc9421", "signature_base", "fastpath", "structured", "digest"} <= set(modules)
    for path in folder.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 350, path.name
    io = {"aiohttp", "socket", "ssl", "asyncio", "selectors", "boto3", "botocore", "gateway.proxy", "gateway.replay"}
    for module in modules:
        code = (
            f"import sys, gateway.signing.{module}; "
            f"print(sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {sorted(io)!r})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        assert out.stdout.strip() == "[]", (module, out.stdout)


async def test_connection_cannot_strip_a_field_the_signature_covers(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    """Connection makes the fields it names hop-by-hop; dropping a signed one would forward a
    request other than the one that verified, so the request is refused instead."""
    gw = await make_gateway()
    for nominated in ("Content-Digest", "keep-alive, content-digest"):
        headers = signed_headers(gw, "hooks.example", int(clock.now))
        headers["Connection"] = nominated
        assert await post(gw, headers) == (400, "bad_request")
    headers = signed_headers(gw, "hooks.example", int(clock.now))
    headers["Connection"] = "keep-alive, Content-Type"  # not covered: dropped as before, still verifies
    assert await post(gw, headers) == (200, "")
    assert len(upstream.received) == 1
    assert "Content-Type" not in upstream.received[0].headers
    assert upstream.received[0].headers["Content-Digest"].startswith("sha-256=:")


async def test_no_underscored_header_name_passes_a_verify_route(
    make_gateway: GatewayFactory, upstream: Recorder, clock: FakeClock
) -> None:
    """CGI/WSGI upstreams read "Content_Type" as Content-Type: a twin of a signed field."""
    gw = await make_gateway()
    headers = signed_headers(gw, "hooks.example", int(clock.now))
    headers["Content_Digest"] = "sha-256=:AAAA:"
    headers["X_Tenant"] = "evil"
    assert await post(gw, headers) == (200, "")
    assert not [name for name in upstream.received[0].headers if "_" in name]
