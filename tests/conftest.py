"""End-to-end fixtures: a real recording upstream and a real gateway, both aiohttp servers on
127.0.0.1, built from a config dict exactly as ``serve`` builds them from TOML."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from gateway import config as config_mod
from gateway.proxy.app import build_listener_app
from gateway.proxy.runtime import Runtime, open_runtime
from gateway.replay import ReplayStore
from tests.helpers import FakeClock, random_secret
from tests.moto_faults import AWS_ENV, FaultyMotoServer
from tests.support import REDIS_URL, Proc


@dataclass
class Received:
    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Recorder:
    """A real upstream that records every request it receives."""

    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path, CIMultiDict(request.headers), body))
        if request.path.endswith("/slow"):
            await self.release.wait()
        if request.path.endswith("/stream"):
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            for i in range(64):
                await response.write(bytes([i]) * 16384)
            await response.write_eof()
            return response
        headers = {
            "X-Upstream": "yes",
            "Keep-Alive": "timeout=5",
            "Connection": "X-Hop-Reply",
            "X-Hop-Reply": "must-not-pass",
            "Set-Cookie": "session=abc; Path=/",
        }
        return web.Response(text=json.dumps({"ok": True, "path": request.raw_path}), headers=headers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Recorder:
    recorder = Recorder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    recorder.server = await aiohttp_server(app, host="127.0.0.1")
    yield recorder
    recorder.release.set()


@dataclass
class Gateway:
    runtime: Runtime
    servers: dict[str, TestServer]
    keyring_path: Path
    keys: dict[str, str]

    def url(self, listener: str, path: str = "/") -> URL:
        return self.servers[listener].make_url(path)

    def port(self, listener: str) -> int:
        port = self.servers[listener].port
        assert port is not None
        return port

    def write_keyring(self, document: dict[str, Any]) -> None:
        self.keyring_path.write_text(json.dumps(document))
        os.chmod(self.keyring_path, 0o600)


def write_keyring(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)


def base_config(upstream_url: str, keyring_path: Path) -> dict[str, Any]:
    return {
        "keyrings": {"ring": {"source": "file", "path": str(keyring_path), "refresh_interval_seconds": 30}},
        "listeners": {"sign": {"port": 0}, "verify": {"port": 0}},
        "routes": [
            {"name": "out", "listener": "sign", "mode": "sign", "upstream": upstream_url + "/up", "keyring": "ring"},
            {"name": "in", "listener": "verify", "mode": "verify", "upstream": upstream_url, "keyring": "ring"},
        ],
    }


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path, clock: FakeClock, upstream: Recorder
) -> AsyncIterator[GatewayFactory]:
    stack = contextlib.AsyncExitStack()

    async def factory(
        *,
        keys: dict[str, str] | None = None,
        document: dict[str, Any] | None = None,
        tweak: Any = None,
        refresh: bool = False,
        own_clock: FakeClock | None = None,
        replay: ReplayStore | None = None,
    ) -> Gateway:
        """A gateway; ``own_clock`` and ``replay`` let several instances run on different
        clocks while sharing one replay store, as instances behind one load balancer do."""
        keyring_path = tmp_path / "ring.json"
        keys = keys if keys is not None else {"key-v1": random_secret(), "key-v2": random_secret()}
        if document is not None or keys:
            write_keyring(keyring_path, document if document is not None else keys)
        raw = base_config(upstream.url, keyring_path)
        if tweak is not None:
            tweak(raw)
        cfg = config_mod.parse(raw, base_dir=tmp_path)
        runtime = await stack.enter_async_context(open_runtime(cfg, clock=own_clock or clock, refresh=refresh))
        if replay is not None:
            runtime.replay = replay
        await runtime.load_keyrings()
        servers = {
            name: await aiohttp_server(build_listener_app(runtime, lc), host="127.0.0.1")
            for name, lc in cfg.listeners.items()
        }
        return Gateway(runtime, servers, keyring_path, keys)

    yield factory
    await stack.aclose()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def redis_is_running() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError:
        pytest.fail("no redis-server answers on 127.0.0.1:6379 (.ci/run starts one; see README Development)")


# -- AWS: moto's server over HTTP, behind the fault injector --------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[FaultyMotoServer]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        server = FaultyMotoServer()
        server.start()
        yield server
        server.stop()


@pytest.fixture
def sm(moto: FaultyMotoServer) -> Iterator[Any]:
    """A boto3 client for the test's own writes (what an operator's `aws` CLI would do)."""
    moto.injector.clear()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        yield boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
    moto.injector.clear()
