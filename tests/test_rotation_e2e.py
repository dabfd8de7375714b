"""End to end: two real gateway processes — A signs through a sign route, B verifies — reading one
keyring (a file, and a secret on moto's server), under steady bounded traffic while the real
``rotate`` command walks add -> promote -> retire with short timings (2 s propagation delay, 3 s
overlap, 0.2 s refresh: real seconds, a handful of them, because real processes read real clocks).

What must hold: not one request fails verification from start to finish; the new key signs after
its promotion; the old key is refused once it expired, and after it was removed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from multidict import CIMultiDict

from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring, KeyState
from tests.helpers import REQUIRED, lib_message, lib_signer, random_secret
from tests.moto_faults import AWS_ENV, FaultyMotoServer
from tests.support import Proc, free_port, wait_ready

TIMINGS = (
    "refresh_interval_seconds = 0.2\nrefresh_jitter = 0.1\nearly_refresh_interval_seconds = 0.2\n"
    "propagation_delay_seconds = 2\noverlap_seconds = 3\nclock_skew_seconds = 0\nrotation_period_seconds = 0\n"
)
LISTENER = "[listeners.{name}]\nport = {port}\n"
ROUTE = (
    '[[routes]]\nname = "{name}"\nlistener = "{listener}"\nmode = "{mode}"\nupstream = "{upstream}"\nkeyring = "r"\n'
)


def gateway_config(tmp: Path, name: str, keyring: str, body: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f"[gateway]\nshutdown_grace_seconds = 1\n[keyrings.r]\n{keyring}{TIMINGS}{body}")
    return path


@dataclass
class Traffic:
    """Sequential POSTs through A's sign listener, a few hundred a second at most."""

    url: str
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    key_ids: list[tuple[float, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            n = 0
            while not self.stop.is_set() and n < 20_000:
                n += 1
                async with session.post(f"{self.url}/orders?n={n}", json={"n": n}) as resp:
                    body = await resp.text()
                    self.statuses[resp.status] += 1
                    if resp.status != 200:
                        self.failures.append(f"{resp.status} {body[:200]}")
                        continue
                    headers = dict(json.loads(body)["headers"])
                    self.key_ids.append((time.time(), headers["X-Gateway-Key-Id"]))
                await asyncio.sleep(0.005)

    def signed_with_since(self, since: float) -> set[str]:
        return {kid for at, kid in self.key_ids if at >= since}


async def rotate(cfg: Path, cwd: Path, env: dict[str, str], step: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(cfg), "rotate", "--keyring", "r", step,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.time() + 0.1))


async def signed_by_us(verify_port: int, key_id: str, secret: str) -> tuple[int, str]:
    """A request signed with ``key_id`` as a sender holding the secret would sign it."""
    url = f"http://127.0.0.1:{verify_port}/direct"
    headers: CIMultiDict[str] = CIMultiDict({"Host": f"127.0.0.1:{verify_port}", "Content-Type": "application/json"})
    body = b'{"direct": true}'
    lib_signer({key_id: secret.encode()}).sign(
        lib_message("POST", url, headers),
        key_id=key_id,
        created=datetime.datetime.now(tz=datetime.UTC),
        nonce=random_secret()[:24],
        covered_component_ids=REQUIRED,
        body=body,
        label="sig",
    )
    del headers["Host"]
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        return resp.status, json.loads(await resp.text()).get("reason", "")


@contextlib.contextmanager
def two_gateways(tmp: Path, keyring: str) -> Iterator[tuple[Proc, Proc, int, int]]:
    sign, verify, echo = free_port(), free_port(), free_port()
    a = gateway_config(
        tmp,
        "a",
        keyring,
        LISTENER.format(name="out", port=sign)
        + ROUTE.format(name="out", listener="out", mode="sign", upstream=f"http://127.0.0.1:{verify}"),
    )
    b = gateway_config(
        tmp,
        "b",
        keyring,
        LISTENER.format(name="in", port=verify)
        + f"[echo]\nport = {echo}\n"
        + ROUTE.format(name="in", listener="in", mode="verify", upstream=f"http://127.0.0.1:{echo}"),
    )
    procs: list[Proc] = []
    try:
        for cfg in (b, a):
            procs.append(Proc("--config", str(cfg), "serve", cwd=tmp))
        yield procs[1], procs[0], sign, verify
    finally:
        for proc in procs:
            proc.stop()


async def walk(tmp: Path, keyring: str, env: dict[str, str], read: Callable[[], Keyring]) -> None:
    start = read()
    old = start.signing_key
    with two_gateways(tmp, keyring) as (a, b, sign, verify):
        await wait_ready(verify, b)
        await wait_ready(sign, a)
        traffic = Traffic(f"http://127.0.0.1:{sign}")
        runner = asyncio.create_task(traffic.run())
        try:
            cfg = tmp / "a.toml"
            await asyncio.sleep(0.5)
            await rotate(cfg, tmp, env, "add")
            pending = next(k for k in read().keys if k.state is KeyState.PENDING)
            assert traffic.signed_with_since(time.time() - 0.3) == {old.id}  # a pending key signs nowhere
            await until((pending.created_at or 0) + 2)

            await rotate(cfg, tmp, env, "promote")
            promoted_at = time.time()
            expires = read().get(old.id).expires_at  # type: ignore[union-attr]
            assert expires is not None
            await until(promoted_at + 1)
            assert traffic.signed_with_since(promoted_at + 0.8) == {pending.id}  # the new key signs

            await until(expires)
            assert await signed_by_us(verify, old.id, old.secret) == (401, "expired_key")
            assert (await signed_by_us(verify, pending.id, pending.secret))[0] == 200
            await rotate(cfg, tmp, env, "retire")
            assert [k.id for k in read().keys] == [pending.id]
            await asyncio.sleep(0.6)  # B reloads (0.2 s refresh) and no longer knows the old key
            assert await signed_by_us(verify, old.id, old.secret) == (401, "unknown_key")
        finally:
            traffic.stop.set()
            await asyncio.wait_for(runner, 10)
        assert traffic.failures == [] and traffic.statuses[200] > 100, traffic.statuses
        print(f"e2e {keyring.splitlines()[0]}: {dict(traffic.statuses)}, keys {Counter(k for _, k in traffic.key_ids)}")
        assert traffic.key_ids[0][1] == old.id and traffic.key_ids[-1][1] == pending.id


def rotator_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HMAC_GATEWAY"))}
    return env | AWS_ENV | (extra or {})


def lifecycle_doc() -> dict[str, Any]:
    return {"hmac_gateway_keyring": 1, "keys": [{"id": "key-v1", "secret": random_secret(), "state": "primary"}]}


async def test_zero_failed_verifications_while_a_file_keyring_rotates(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text(json.dumps(lifecycle_doc()))
    os.chmod(path, 0o600)
    await walk(tmp_path, f'path = "{path}"\n', rotator_env(), lambda: parse_keyring("r", path.read_bytes()))


async def test_zero_failed_verifications_while_a_secret_rotates(
    tmp_path: Path, moto: FaultyMotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
    name = f"hmac-gateway/e2e/{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps(lifecycle_doc()))
    keyring = (
        f'source = "aws-secretsmanager"\nsecret_id = "{name}"\nregion = "us-east-1"\nendpoint_url = "{moto.endpoint}"\n'
    )
    env = rotator_env({"AWS_ENDPOINT_URL_STS": moto.endpoint})
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the gateway processes inherit it; restored after the test

    def read() -> Keyring:
        return parse_keyring("r", sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"])

    await walk(tmp_path, keyring, env, read)
