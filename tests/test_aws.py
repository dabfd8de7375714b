"""Keyrings in AWS Secrets Manager: moto's server mode over real HTTP (FaultyMotoServer on
127.0.0.1), the gateway talking to it through ``endpoint_url``. Faults are real HTTP answers
injected by a WSGI wrapper; call counts are what the *server* received."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.errors import SourceError, WriteConflict
from gateway.keys.aws import SecretsManagerSource
from gateway.keys.cache import KeyringCache
from gateway.keys.settings import RefreshPolicy
from tests.cas_workers import run_workers, secrets_manager_worker
from tests.conftest import GatewayFactory, Recorder
from tests.helpers import FakeClock, random_secret
from tests.moto_faults import AWS_ENV, Fault, FaultyMotoServer
from tests.support import lib_signed_headers, lib_verify_received, post


def new_secret(sm: Any, document: dict[str, Any] | str) -> str:
    name = f"hmac-gateway/test/{uuid.uuid4().hex[:8]}"
    value = document if isinstance(document, str) else json.dumps(document)
    sm.create_secret(Name=name, SecretString=value)
    return name


def add_key_like_the_runbook(sm: Any, name: str, key_id: str, secret: str) -> None:
    """`aws secretsmanager get-secret-value | jq '. + {key_id: secret}' | update-secret`."""
    current = json.loads(sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"])
    sm.update_secret(SecretId=name, SecretString=json.dumps({**current, key_id: secret}))


def aws_ring(endpoint: str, secret_id: str, **extra: Any) -> Any:
    def tweak(raw: dict[str, Any]) -> None:
        raw["keyrings"]["ring"] = {
            "source": "aws-secretsmanager",
            "secret_id": secret_id,
            "region": "us-east-1",
            "endpoint_url": endpoint,
            "max_attempts": 1,
            "read_timeout_seconds": 1,
            "connect_timeout_seconds": 1,
            **extra,
        }

    return tweak


def source_for(moto: FaultyMotoServer, secret_id: str, **kw: Any) -> SecretsManagerSource:
    kw.setdefault("max_attempts", 1)
    kw.setdefault("read_timeout", 1.0)
    return SecretsManagerSource("ring", secret_id, region="us-east-1", endpoint_url=moto.endpoint, **kw)


def get_calls(moto: FaultyMotoServer) -> int:
    return moto.injector.calls["GetSecretValue"]


# -- serving from Secrets Manager ----------------------------------------------------------------


async def test_flat_map_secret_serves_and_a_hand_added_key_is_accepted_without_restart(
    make_gateway: GatewayFactory, upstream: Recorder, moto: FaultyMotoServer, sm: Any
) -> None:
    keys = {"key-v1": random_secret(), "key-v2": random_secret()}
    name = new_secret(sm, keys)
    gw = await make_gateway(keys={}, tweak=aws_ring(moto.endpoint, name, refresh_interval_seconds=0.2), refresh=True)
    gw.keys.update(keys)
    assert (await post(gw.url("sign", "/x"), data=b"1"))[0] == 200
    assert lib_verify_received(gw, upstream.received[-1])[0].parameters["keyid"] == "key-v2"

    gw.keys["key-v3"] = random_secret()
    add_key_like_the_runbook(sm, name, "key-v3", gw.keys["key-v3"])
    deadline = time.monotonic() + 5  # within one refresh interval (0.2 s ± jitter), bounded here
    status = 0
    while time.monotonic() < deadline:
        status, _, _ = await post(
            gw.url("verify", "/cb"), data=b"{}", headers=lib_signed_headers(gw, "key-v3", path="/cb", body=b"{}")
        )
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200, "a key added to the secret by hand must be accepted without a restart"
    assert upstream.received[-1].headers["X-Gateway-Key-Id"] == "key-v3"
    # ...and the newest flat-map entry now signs outbound
    await post(gw.url("sign", "/y"), data=b"2")
    assert lib_verify_received(gw, upstream.received[-1])[0].parameters["keyid"] == "key-v3"
    reads = [payload for action, payload in moto.injector.requests if action == "GetSecretValue"]
    assert reads and all(p.get("VersionStage") == "AWSCURRENT" for p in reads)


async def test_lifecycle_document_in_a_secret(moto: FaultyMotoServer, sm: Any) -> None:
    doc = {
        "hmac_gateway_keyring": 1,
        "keys": [
            {"id": "a", "secret": random_secret(), "state": "retiring", "expires_at": "2030-01-01T00:00:00Z"},
            {"id": "b", "secret": random_secret(), "state": "primary"},
        ],
    }
    cache = KeyringCache("ring", source_for(moto, new_secret(sm, doc)))
    assert await cache.refresh()
    assert cache.keyring is not None and cache.keyring.format == "lifecycle"
    assert cache.keyring.signing_key_id == "b"
    assert cache.keyring.version_id  # Secrets Manager's VersionId


async def test_concurrent_refreshes_make_one_call_the_server_sees(moto: FaultyMotoServer, sm: Any) -> None:
    cache = KeyringCache("ring", source_for(moto, new_secret(sm, {"k": random_secret()})))
    moto.injector.inject(Fault("delay", seconds=0.3))  # keep the one load in flight while 1,000 pile up
    before = get_calls(moto)
    results = await asyncio.gather(*(cache.refresh() for _ in range(1000)))
    assert all(results)
    assert get_calls(moto) - before == 1


async def test_a_flood_of_unknown_key_ids_causes_at_most_one_early_refresh(
    make_gateway: GatewayFactory, upstream: Recorder, moto: FaultyMotoServer, sm: Any
) -> None:
    keys = {"key-v1": random_secret()}
    gw = await make_gateway(keys={}, tweak=aws_ring(moto.endpoint, new_secret(sm, keys)))
    gw.keys.update({f"junk-{i}": random_secret() for i in range(1000)})
    requests = [lib_signed_headers(gw, f"junk-{i}", path="/cb", body=b"{}") for i in range(1000)]
    before = get_calls(moto)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(headers: Any) -> str:
            async with session.post(gw.url("verify", "/cb"), data=b"{}", headers=headers) as resp:
                return str((await resp.json(content_type=None))["reason"])

        reasons = await asyncio.gather(*(one(h) for h in requests))
    assert set(reasons) == {"unknown_key"}
    await asyncio.sleep(0.2)  # let the (at most one) early refresh finish
    assert get_calls(moto) - before == 1
    assert upstream.received == []


# -- faults --------------------------------------------------------------------------------------

FAULTS = [
    ("throttling", lambda m, sm, name: m.injector.inject(Fault("throttle")), "ThrottlingException"),
    ("5xx", lambda m, sm, name: m.injector.inject(Fault("error500")), "InternalServiceError"),
    ("unavailable", lambda m, sm, name: m.injector.inject(Fault("unavailable")), "ServiceUnavailable"),
    ("latency past the timeout", lambda m, sm, name: m.injector.inject(Fault("delay", seconds=0.8)), "timed out"),
    ("access denied", lambda m, sm, name: m.injector.inject(Fault("deny")), "access denied"),
    ("not JSON", lambda m, sm, name: sm.update_secret(SecretId=name, SecretString="not json"), "not valid JSON"),
    (
        "too-short key",
        lambda m, sm, name: sm.update_secret(SecretId=name, SecretString=json.dumps({"tiny": "short"})),
        "'tiny': key material is 5 bytes",
    ),
]


@pytest.mark.parametrize(("case", "inject", "expected"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_faults_keep_the_last_good_keyring_and_back_off(
    moto: FaultyMotoServer, sm: Any, case: str, inject: Any, expected: str
) -> None:
    good = {"key-v1": random_secret(), "key-v2": random_secret()}
    name = new_secret(sm, good)
    clock = FakeClock(1_000_000.0)
    policy = RefreshPolicy(interval=30, max_staleness=600, backoff_initial=1, backoff_cap=20)
    source = source_for(moto, name, read_timeout=0.3)
    cache = KeyringCache("ring", source, policy=policy, clock=clock, rand=lambda: 0.5)
    assert await cache.refresh()
    last_good = cache.keyring
    inject(moto, sm, name)
    delays = []
    for _ in range(6):
        clock.advance(10)
        assert not await cache.refresh()
        delays.append(cache.next_delay())
    assert cache.keyring is last_good  # a bad new value never replaces a good keyring
    assert cache.last_error is not None and expected in cache.last_error
    for secret in good.values():
        assert secret not in cache.last_error
    assert delays == [1, 2, 4, 8, 16, 20]  # exponential, capped
    status = cache.status(clock.now)
    assert status["stale"] is True and status["ready"] is True
    assert status["stale_since"] is not None and status["consecutive_failures"] == 6
    clock.advance(600)
    assert cache.status(clock.now)["ready"] is False  # past max staleness: /readyz turns 503
    moto.injector.clear()
    sm.update_secret(SecretId=name, SecretString=json.dumps(good))
    assert await cache.refresh()
    assert cache.status(clock.now)["ready"] is True and cache.failures == 0


async def test_connection_refused_is_a_fault_like_the_others() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        source = SecretsManagerSource(
            "ring", "x", region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1
        )
        with pytest.raises(SourceError, match="cannot connect to the Secrets Manager endpoint"):
            await asyncio.to_thread(source.load)


async def test_retries_are_bounded_and_counted_at_the_server(moto: FaultyMotoServer, sm: Any) -> None:
    name = new_secret(sm, {"k": random_secret()})
    moto.injector.inject(Fault("throttle", times=1))
    before = get_calls(moto)
    assert (await asyncio.to_thread(source_for(moto, name, max_attempts=2).load)).data
    assert get_calls(moto) - before == 2  # one throttled, one retried
    moto.injector.inject(Fault("throttle"))
    before = get_calls(moto)
    with pytest.raises(SourceError, match="ThrottlingException"):
        await asyncio.to_thread(source_for(moto, name, max_attempts=2).load)
    assert get_calls(moto) - before == 2  # and no more
    before = get_calls(moto)
    with pytest.raises(SourceError, match="ThrottlingException"):
        await asyncio.to_thread(source_for(moto, name, max_attempts=1).load)
    assert get_calls(moto) - before == 1  # max_attempts = 1: no retry at all


async def test_stale_gateway_keeps_serving_and_refuses_expired_keys_on_its_own(
    make_gateway: GatewayFactory, upstream: Recorder, moto: FaultyMotoServer, sm: Any, clock: FakeClock
) -> None:
    old, new = random_secret(), random_secret()
    expires = int(clock.now) + 120
    doc = {
        "hmac_gateway_keyring": 1,
        "keys": [
            {
                "id": "old",
                "secret": old,
                "state": "retiring",
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            },
            {"id": "new", "secret": new, "state": "primary"},
        ],
    }
    gw = await make_gateway(keys={}, tweak=aws_ring(moto.endpoint, new_secret(sm, doc), max_staleness_seconds=60))
    gw.keys.update({"old": old, "new": new})
    moto.injector.inject(Fault("error500"))
    assert not await gw.runtime.caches["ring"].refresh()
    clock.advance(61)
    status, doc_ready, _ = await post(gw.url("sign", "/readyz"), method="GET")
    assert status == 503 and doc_ready["keyrings"]["ring"]["stale"] is True
    assert "InternalServiceError" in doc_ready["keyrings"]["ring"]["last_error"]
    assert (await post(gw.url("sign", "/x"), data=b"1"))[0] == 200  # still serving the last good keyring
    body = b"{}"
    ok = lib_signed_headers(gw, "old", path="/cb", body=body, created=clock.now)
    assert (await post(gw.url("verify", "/cb"), data=body, headers=ok))[0] == 200
    clock.now = expires  # the source is down, yet the retiring key expires on time
    late = lib_signed_headers(gw, "old", path="/cb", body=body, created=clock.now)
    assert (await post(gw.url("verify", "/cb"), data=body, headers=late))[1]["reason"] == "expired_key"


async def test_nothing_ever_loaded_answers_503_until_the_secret_appears(
    make_gateway: GatewayFactory, upstream: Recorder, moto: FaultyMotoServer, sm: Any
) -> None:
    name = f"hmac-gateway/test/missing-{uuid.uuid4().hex[:8]}"
    gw = await make_gateway(keys={}, tweak=aws_ring(moto.endpoint, name, start_degraded=True))
    for listener in ("sign", "verify"):
        status, doc, headers = await post(gw.url(listener, "/x"), data=b"1")
        assert (status, doc["reason"]) == (503, "keyring_unavailable")
        assert headers["Content-Type"] == "application/problem+json"
    status, doc, _ = await post(gw.url("sign", "/readyz"), method="GET")
    assert status == 503 and "ResourceNotFoundException" in doc["keyrings"]["ring"]["last_error"]
    sm.create_secret(Name=name, SecretString=json.dumps({"k": random_secret()}))
    assert await gw.runtime.caches["ring"].refresh()
    assert (await post(gw.url("sign", "/readyz"), method="GET"))[0] == 200
    assert (await post(gw.url("sign", "/x"), data=b"1"))[0] == 200


# -- steady traffic through changes and outages ---------------------------------------------------


async def test_steady_traffic_keeps_100_percent_success_through_changes_and_outages(
    make_gateway: GatewayFactory, upstream: Recorder, moto: FaultyMotoServer, sm: Any
) -> None:
    keys = {"key-v1": random_secret(), "key-v2": random_secret()}
    name = new_secret(sm, keys)
    gw = await make_gateway(
        keys={},
        tweak=aws_ring(
            moto.endpoint, name, refresh_interval_seconds=0.05, backoff_cap_seconds=0.2, read_timeout_seconds=0.3
        ),
        refresh=True,
    )
    gw.keys.update(keys)
    total, statuses = 400, []
    events = {
        50: lambda: add_key_like_the_runbook(sm, name, "key-v3", gw.keys.setdefault("key-v3", random_secret())),
        100: lambda: moto.injector.inject(Fault("throttle")),
        160: moto.injector.clear,
        200: lambda: moto.injector.inject(Fault("error500")),
        260: lambda: moto.injector.inject(Fault("delay", seconds=1.0)),
        320: moto.injector.clear,
    }
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for i in range(total):  # bounded in count, and in time below
            if i in events:
                await asyncio.to_thread(events[i])
            body = json.dumps({"n": i}).encode()
            if i % 2:
                headers = lib_signed_headers(gw, "key-v1", path=f"/cb/{i}", body=body)
                url = gw.url("verify", f"/cb/{i}")
            else:
                headers, url = {}, gw.url("sign", f"/out/{i}")
            async with session.post(url, data=body, headers=headers) as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.005)
            assert time.monotonic() - started < 60
    assert statuses.count(200) == total, {s: statuses.count(s) for s in set(statuses)}
    signed_out = [r for r in upstream.received if r.raw_path.startswith("/up/out/")]
    assert len(signed_out) == total // 2
    for received in signed_out:  # every outbound request verifies at the backend
        lib_verify_received(gw, received)
    assert {lib_verify_received(gw, r)[0].parameters["keyid"] for r in signed_out} == {"key-v2", "key-v3"}
    cache = gw.runtime.caches["ring"]
    assert cache.failures == 0 and cache.keyring is not None and cache.keyring.get("key-v3") is not None


# -- start-up, as an operator sees it -------------------------------------------------------------


def _config(tmp: Path, endpoint: str, secret_id: str, region: str = "us-east-1", degraded: bool = False) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp / "gateway.toml"
    path.write_text(
        f"""
[keyrings.p2b]
source = "aws-secretsmanager"
secret_id = "{secret_id}"
region = "{region}"
endpoint_url = "{endpoint}"
max_attempts = 1
start_degraded = {str(degraded).lower()}
[listeners.sign]
port = {port}
[[routes]]
listener = "sign"
mode = "sign"
upstream = "http://127.0.0.1:9"
keyring = "p2b"
"""
    )
    return path


def _serve(cfg: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENV)
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


@pytest.mark.parametrize(
    ("case", "region", "env", "expected"),
    [
        ("missing secret", "us-east-1", {}, "ResourceNotFoundException: secret not found"),
        ("wrong region", "eu-west-1", {}, "ResourceNotFoundException: secret not found"),
        (
            "no credentials",
            "us-east-1",
            {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""},
            "no usable AWS credentials",
        ),
    ],
)
def test_start_up_failures_are_one_line_and_exit_3(
    tmp_path: Path, moto: FaultyMotoServer, sm: Any, case: str, region: str, env: dict[str, str], expected: str
) -> None:
    name = "hmac-gateway/test/missing" if case == "missing secret" else new_secret(sm, {"k": random_secret()})
    result = _serve(_config(tmp_path, moto.endpoint, name, region=region), _env(**env))
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hmac-gateway: keyring 'p2b' could not be loaded") and expected in last
    assert "Traceback" not in result.stderr


def test_start_degraded_starts_and_reports_not_ready(tmp_path: Path, moto: FaultyMotoServer) -> None:
    cfg = _config(tmp_path, moto.endpoint, "hmac-gateway/test/absent", degraded=True)
    port = int(cfg.read_text().split("port = ")[1].split()[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and status is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    status = int(conn.recv(100).split()[1])
            except OSError:
                time.sleep(0.1)
        assert status == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert '"msg":"starting degraded"' in stderr


# -- compare-and-swap writes (SPEC section 4) -------------------------------------------------------


def stages_of(sm: Any, name: str) -> dict[str, list[str]]:
    versions = sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]
    return {v["VersionId"]: sorted(v.get("VersionStages", [])) for v in versions}


def writes_document(*entries: str) -> str:
    return json.dumps({"writes": list(entries)})


def test_write_stages_a_new_version_then_moves_awscurrent_from_the_version_read(
    moto: FaultyMotoServer, sm: Any
) -> None:
    name = new_secret(sm, writes_document())
    source = source_for(moto, name)
    read = source.load()
    first = len(moto.injector.requests)
    written = source.write(writes_document("one").encode(), expected_version=read.version_id)
    calls = moto.injector.requests[first:]
    assert written.version_id != read.version_id
    assert source.load() == written
    current = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    assert (current["VersionId"], current["SecretString"]) == (written.version_id, writes_document("one"))
    move_stage = "UpdateSecretVersionStage"
    # put, move, drop our label, then look for labels dead writers left behind (none here)
    assert [action for action, _ in calls] == ["PutSecretValue", move_stage, move_stage, "ListSecretVersionIds"]
    put, move, cleanup, _ = (payload for _, payload in calls)
    [label] = put["VersionStages"]
    assert label.startswith("hmac-gateway-write-") and "AWSCURRENT" not in put["VersionStages"]
    assert len(put["ClientRequestToken"]) >= 32
    assert move == {
        "SecretId": name,
        "VersionStage": "AWSCURRENT",
        "MoveToVersionId": written.version_id,
        "RemoveFromVersionId": read.version_id,
    }
    assert cleanup == {"SecretId": name, "VersionStage": label, "RemoveFromVersionId": written.version_id}
    stages = stages_of(sm, name)
    assert stages[written.version_id] == ["AWSCURRENT"]  # the temporary label is gone
    assert stages[read.version_id] == ["AWSPREVIOUS"]


def test_a_write_from_a_stale_read_is_a_conflict_and_leaves_no_label(moto: FaultyMotoServer, sm: Any) -> None:
    name = new_secret(sm, writes_document())
    first, second = source_for(moto, name), source_for(moto, name)
    read_by_first, read_by_second = first.load(), second.load()
    won = first.write(writes_document("first").encode(), expected_version=read_by_first.version_id)
    with pytest.raises(WriteConflict) as info:
        second.write(writes_document("second").encode(), expected_version=read_by_second.version_id)
    assert str(info.value) == f"aws-secretsmanager:{name}: the keyring changed since it was read"
    current = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    assert (current["VersionId"], current["SecretString"]) == (won.version_id, writes_document("first"))
    labels = [label for stages in stages_of(sm, name).values() for label in stages]
    assert sorted(labels) == ["AWSCURRENT", "AWSPREVIOUS"]  # the losing attempt's label was removed


def test_every_write_attempt_uses_a_fresh_token_and_label(moto: FaultyMotoServer, sm: Any) -> None:
    name = new_secret(sm, writes_document())
    source = source_for(moto, name)
    read = source.load()
    first = len(moto.injector.requests)
    source.write(writes_document("a").encode(), expected_version=read.version_id)
    with pytest.raises(WriteConflict):
        source.write(writes_document("b").encode(), expected_version=read.version_id)
    puts = [p for action, p in moto.injector.requests[first:] if action == "PutSecretValue"]
    assert len(puts) == 2
    assert puts[0]["ClientRequestToken"] != puts[1]["ClientRequestToken"]
    assert puts[0]["VersionStages"] != puts[1]["VersionStages"]


def test_write_errors_are_reported_by_code_without_the_value(moto: FaultyMotoServer, sm: Any) -> None:
    name = new_secret(sm, writes_document())
    source = source_for(moto, name)
    read = source.load()
    secret_value = random_secret()
    moto.injector.inject(Fault("deny", action="PutSecretValue", times=1))
    with pytest.raises(SourceError) as info:
        source.write(json.dumps({"k": secret_value}).encode(), expected_version=read.version_id)
    assert not isinstance(info.value, WriteConflict)
    assert "AccessDeniedException" in str(info.value) and "PutSecretValue" in str(info.value)
    assert secret_value not in str(info.value)
    assert source.load().version_id == read.version_id


def test_eight_processes_in_read_modify_write_loops_lose_no_update_in_secrets_manager(
    moto: FaultyMotoServer, sm: Any
) -> None:
    name = new_secret(sm, writes_document())
    processes, writes_each = 8, 6
    counters = run_workers(secrets_manager_worker, (moto.endpoint, name), processes, writes_each)
    current = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    entries = json.loads(current["SecretString"])["writes"]
    assert sorted(entries) == sorted(f"w{w}-{n}" for w in range(processes) for n in range(writes_each))
    assert sum(c["conflicts"] for c in counters) > 0  # the processes really did race
    labels = [label for stages in stages_of(sm, name).values() for label in stages]
    assert labels.count("AWSCURRENT") == 1
    assert not [label for label in labels if label.startswith("hmac-gateway-write-")]


def test_a_move_applied_but_whose_answer_was_lost_is_not_reported_as_a_conflict(
    moto: FaultyMotoServer, sm: Any
) -> None:
    name = new_secret(sm, writes_document())
    source = source_for(moto, name, max_attempts=2)  # botocore retries the 500: the retry finds it done
    read = source.load()
    moto.injector.inject(Fault("lost_answer", action="UpdateSecretVersionStage", times=1))
    before = moto.injector.calls["UpdateSecretVersionStage"]
    written = source.write(writes_document("once").encode(), expected_version=read.version_id)
    assert moto.injector.calls["UpdateSecretVersionStage"] - before == 3  # lost, retried, label clean-up
    current = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    assert (current["VersionId"], current["SecretString"]) == (written.version_id, writes_document("once"))
    assert stages_of(sm, name)[written.version_id] == ["AWSCURRENT"]


def test_a_dead_writers_staging_label_is_swept_once_it_is_old_enough(moto: FaultyMotoServer, sm: Any) -> None:
    """A writer killed between its put and its stage move leaves its temporary label on an
    orphaned version; the next successful write removes it, but only once it is older than any
    live writer's would be."""
    name = new_secret(sm, writes_document())
    orphan = sm.put_secret_value(
        SecretId=name,
        SecretString=writes_document("from a writer that died"),
        ClientRequestToken=str(uuid.uuid4()),
        VersionStages=["hmac-gateway-write-deadbeef"],
    )["VersionId"]
    source = source_for(moto, name)
    source.write(writes_document("young").encode(), expected_version=source.load().version_id)
    assert stages_of(sm, name)[orphan] == ["hmac-gateway-write-deadbeef"]  # might be a writer still at work
    source.orphan_label_seconds = 0
    written = source.write(writes_document("old").encode(), expected_version=source.load().version_id)
    stages = stages_of(sm, name)
    assert not [s for labels in stages.values() for s in labels if s.startswith("hmac-gateway-write-")], stages
    assert stages[written.version_id] == ["AWSCURRENT"]
