"""The shared replay store against a real redis-server (127.0.0.1:6379; .ci/run starts one when
none answers). Two gateway runtimes sharing it stand in for two instances or two workers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from multidict import CIMultiDict

from gateway.errors import Reason, ReplayStoreError, RequestRejected
from gateway.replay import replay_key
from gateway.replay.redis import RedisReplayStore
from tests.conftest import GatewayFactory, Recorder
from tests.helpers import REQUIRED, lib_message, lib_signer
from tests.support import (
    REDIS_URL,
    Proc,
    free_port,
    lib_signed_headers,
    post,
    private_redis,
    run_cli,
    wait_ready,
    workers_config,
)

pytestmark = pytest.mark.usefixtures("redis_is_running")


@pytest.fixture
def prefix() -> str:
    return f"hmac-gateway-test:{uuid.uuid4().hex[:8]}:"


async def test_remember_then_replay_with_the_right_expiry(prefix: str) -> None:
    store = RedisReplayStore(REDIS_URL, prefix=prefix)
    key = replay_key("ring", "key-v1", "nonce-1")
    try:
        assert await store.remember(key, 301.0) is True
        assert await store.remember(key, 301.0) is False
        assert await store.remember(replay_key("ring", "key-v2", "nonce-1"), 301.0) is True
        ttl_ms = redis.Redis.from_url(REDIS_URL).pttl(prefix.encode() + key.hex().encode())
        assert 300_000 < ttl_ms <= 301_000  # expiry set by Redis; nothing sleeps here
    finally:
        await store.close()


async def test_unreachable_redis_fails_closed() -> None:
    store = RedisReplayStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    try:
        with pytest.raises(RequestRejected) as err:
            await store.remember(replay_key("r", "k", "n"), 10)
        assert err.value.reason is Reason.REPLAY_STORE_UNAVAILABLE
    finally:
        await store.close()


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[str]:
    """Refuses every write: maxmemory reached under noeviction."""
    with private_redis(tmp_path, "--maxmemory", "1", "--maxmemory-policy", "noeviction") as url:
        yield url


async def test_a_full_redis_rejects_rather_than_evicts(full_redis: str) -> None:
    store = RedisReplayStore(full_redis)
    try:
        with pytest.raises(RequestRejected) as err:
            await store.remember(replay_key("r", "k", "n"), 10)
        assert err.value.reason is Reason.REPLAY_STORE_FULL
    finally:
        await store.close()


def _redis(prefix: str, url: str = REDIS_URL) -> Any:
    def tweak(raw: dict[str, Any]) -> None:
        raw["gateway"] = {"replay_store": "redis", "redis_url": url, "redis_key_prefix": prefix}

    return tweak


async def test_two_gateways_sharing_redis_refuse_a_replay_across_them(
    make_gateway: GatewayFactory, upstream: Recorder, prefix: str
) -> None:
    keys = {"key-v1": "a" * 64}
    first = await make_gateway(keys=keys, tweak=_redis(prefix))
    second = await make_gateway(keys=keys, tweak=_redis(prefix))
    headers = lib_signed_headers(first, "key-v1", path="/cb", body=b"{}")
    assert (await post(first.url("verify", "/cb"), data=b"{}", headers=headers))[0] == 200
    # The same nonce, validly signed for the second instance's own address (its Host differs, so
    # the captured bytes would fail there on @authority alone): the shared store refuses it.
    headers2 = lib_signed_headers(second, "key-v1", path="/cb", body=b"{}", nonce=_nonce(headers))
    status, doc, _ = await post(second.url("verify", "/cb"), data=b"{}", headers=headers2)
    assert (status, doc["reason"]) == (401, "replayed")
    assert len(upstream.received) == 1


def _nonce(headers: Any) -> str:
    return str(headers["Signature-Input"].split('nonce="')[1].split('"')[0])


async def test_redis_down_answers_503_and_forwards_nothing(
    make_gateway: GatewayFactory, upstream: Recorder, prefix: str
) -> None:
    gw = await make_gateway(tweak=_redis(prefix, f"redis://127.0.0.1:{free_port()}/0"))
    headers = lib_signed_headers(gw, "key-v1", path="/cb", body=b"{}")
    status, doc, _ = await post(gw.url("verify", "/cb"), data=b"{}", headers=headers)
    assert (status, doc["reason"]) == (503, "replay_store_unavailable")
    assert upstream.received == []


async def test_workers_share_one_replay_store(tmp_path: Path, prefix: str, upstream: Recorder) -> None:
    cfg, verify = workers_config(tmp_path, prefix, upstream=upstream.url)
    proc = Proc("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path)
    try:
        await wait_ready(verify, proc)
        key = json.loads((tmp_path / "keyrings" / "demo.json").read_text())["keys"][0]
        url = f"http://127.0.0.1:{verify}/cb"
        headers: CIMultiDict[str] = CIMultiDict({"Host": f"127.0.0.1:{verify}"})
        lib_signer({key["id"]: key["secret"].encode()}).sign(
            lib_message("POST", url, headers),
            key_id=key["id"],
            nonce="once",
            covered_component_ids=REQUIRED,
            body=b"{}",
        )
        del headers["Host"]
        statuses = []
        for _ in range(20):  # new connections each time: SO_REUSEPORT spreads them over both workers
            statuses.append((await post(url, data=b"{}", headers=headers))[0])
        assert statuses.count(200) == 1 and statuses.count(401) == 19, statuses
        assert len(upstream.received) == 1
    finally:
        proc.popen.terminate()
        assert await asyncio.to_thread(proc.wait) == 0


def test_unreachable_redis_stops_the_start_with_exit_5(tmp_path: Path, prefix: str) -> None:
    cfg, _ = workers_config(tmp_path, prefix, f"redis://127.0.0.1:{free_port()}/0")
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 5 and "Redis replay store does not answer" in result.stderr


def test_redis_password_never_shown(tmp_path: Path) -> None:
    cfg, _ = workers_config(tmp_path, "p:", "redis://:hunter2-secret@127.0.0.1:6379/0")
    result = run_cli("--config", str(cfg), "check-config", "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert "hunter2" not in result.stdout + result.stderr and ":***@127.0.0.1:6379" in result.stdout


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[str]:
    """An eviction policy: replay keys could vanish under memory pressure."""
    with private_redis(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru") as url:
        yield url


def test_a_redis_that_may_evict_replay_keys_is_refused_at_start(tmp_path: Path, evicting_redis: str) -> None:
    cfg, _ = workers_config(tmp_path, "p:", evicting_redis)
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 5
    assert "maxmemory-policy volatile-lru; it must be noeviction" in result.stderr


def test_redis_password_in_the_query_is_never_shown(tmp_path: Path) -> None:
    cfg, _ = workers_config(tmp_path, "p:", "redis://127.0.0.1:6379/0?password=s3cret-in-query&db=0")
    result = run_cli("--config", str(cfg), "check-config", "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert "s3cret" not in result.stdout + result.stderr and "password=***&db=0" in result.stdout


def test_a_percent_encoded_password_parameter_is_masked_too(tmp_path: Path) -> None:
    """The client decodes ?passw%6Frd= as password; the printed config must mask it as well."""
    cfg, _ = workers_config(tmp_path, "p:", "redis://127.0.0.1:6379/0?passw%6Frd=s3cret-encoded&db=0")
    result = run_cli("--config", str(cfg), "check-config", "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert "s3cret" not in result.stdout + result.stderr


async def test_start_up_check_warns_when_redis_would_forget_entries_on_restart(tmp_path: Path) -> None:
    # Issue 9 item 7: a Redis without an append-only file loses the newest entries on restart,
    # exactly those whose signatures are still fresh. The check says so (serve logs it).
    with private_redis(tmp_path, "--appendonly", "no") as url:
        store = RedisReplayStore(url)
        try:
            warnings = await store.check()
        finally:
            await store.close()
    assert len(warnings) == 1 and "no append-only file" in warnings[0] and "127.0.0.1" not in warnings[0]
    with private_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec") as url:
        store = RedisReplayStore(url)
        try:
            assert await store.check() == []
        finally:
            await store.close()


async def test_start_up_check_refuses_an_evicting_or_absent_redis(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory-policy", "allkeys-lru") as url:
        store = RedisReplayStore(url)
        try:
            with pytest.raises(ReplayStoreError, match="maxmemory-policy allkeys-lru; it must be noeviction"):
                await store.check()
        finally:
            await store.close()
    store = RedisReplayStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    try:
        with pytest.raises(ReplayStoreError, match=r"^the Redis replay store does not answer$"):
            await store.check()
    finally:
        await store.close()
