"""The lean Redis client (gateway/replay/resp.py) against real redis-servers, checked with
redis-py as the independent client: URL forms, AUTH, SELECT, unix sockets, pipelining under
concurrency, cancellation, timeouts and reconnects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.errors import Reason, RequestRejected
from gateway.replay import replay_key
from gateway.replay.redis import RedisReplayStore
from gateway.replay.resp import RedisAddress, RedisClient, RedisReplyError, RedisUnavailable, encode_command
from tests.support import REDIS_URL, eventually, free_port, private_redis, run_cli, workers_config

pytestmark = pytest.mark.usefixtures("redis_is_running")


def test_url_forms() -> None:
    assert RedisAddress.parse("redis://127.0.0.1:6380/2") == RedisAddress("127.0.0.1", 6380, db=2)
    assert RedisAddress.parse("redis://[::1]/0") == RedisAddress("::1", 6379)
    tls = RedisAddress.parse("rediss://user:p%40ss@cache.internal:6390/1")
    assert (tls.host, tls.port, tls.tls, tls.db, tls.username, tls.password) == (
        "cache.internal",
        6390,
        True,
        1,
        "user",
        "p@ss",
    )
    query = RedisAddress.parse("redis://127.0.0.1:6379?password=q-secret&db=4")
    assert (query.password, query.db) == ("q-secret", 4)
    unix = RedisAddress.parse("unix:///run/redis.sock?db=3&password=x")
    assert (unix.path, unix.db, unix.password) == ("/run/redis.sock", 3, "x")


@pytest.mark.parametrize(
    "url", ["redis://:hunter2@127.0.0.1:notaport/0", "redis://:hunter2@127.0.0.1/zero", "unix://", "http://:hunter2@x"]
)
def test_bad_urls_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ValueError) as info:
        RedisAddress.parse(url)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(RedisAddress.parse("redis://:hunter2@127.0.0.1/0"))


def test_a_bad_redis_url_is_a_config_error(tmp_path: Path) -> None:
    cfg, _ = workers_config(tmp_path, "p:", "redis://:hunter2@127.0.0.1:port/0")
    result = run_cli("--config", str(cfg), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "redis_url: the port and database must be numbers" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_commands_are_encoded_as_resp_arrays() -> None:
    assert encode_command(b"SET", b"k", b"") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"


async def test_replies_of_every_kind_the_store_uses() -> None:
    client = RedisClient(REDIS_URL)
    key = f"hmac-gateway-test:{uuid.uuid4().hex}".encode()
    try:
        assert await client.execute(b"PING") == b"PONG"
        assert await client.execute(b"SET", key, b"1", b"NX", b"PX", b"60000") == b"OK"
        assert await client.execute(b"SET", key, b"1", b"NX", b"PX", b"60000") is None  # nil: it was there
        assert await client.execute(b"GET", key) == b"1"
        assert await client.execute(b"DEL", key) == 1
        info = await client.execute(b"INFO", b"memory")
        assert isinstance(info, bytes) and b"maxmemory_policy:" in info  # a bulk string of ~1 KiB
        with pytest.raises(RedisReplyError) as err:
            await client.execute(b"NOSUCHCOMMAND")
        assert err.value.code == "ERR"
        assert await client.execute(b"PING") == b"PONG"  # an error reply does not break the stream
        assert client.connections_made == 1
    finally:
        await client.close()


async def test_concurrent_commands_are_pipelined_and_answered_in_order() -> None:
    client = RedisClient(REDIS_URL)
    prefix = f"hmac-gateway-test:{uuid.uuid4().hex}:".encode()
    try:
        keys = [prefix + str(i).encode() for i in range(500)]
        firsts = await asyncio.gather(*(client.execute(b"SET", k, k, b"NX", b"PX", b"60000") for k in keys))
        values = await asyncio.gather(*(client.execute(b"GET", k) for k in keys))
        assert firsts == [b"OK"] * 500
        assert values == keys  # each caller got its own reply
        assert client.connections_made == 1
        other = redis.Redis.from_url(REDIS_URL)
        assert other.get(keys[123]) == keys[123]  # and Redis holds what redis-py reads back
        other.delete(*keys)
    finally:
        await client.close()


async def test_a_cancelled_caller_does_not_shift_the_replies() -> None:
    client = RedisClient(REDIS_URL)
    key = f"hmac-gateway-test:{uuid.uuid4().hex}".encode()
    try:
        await client.execute(b"PING")
        slow = asyncio.ensure_future(client.execute(b"DEBUG", b"SLEEP", b"0.1"))
        await asyncio.sleep(0.02)
        slow.cancel()
        assert await client.execute(b"SET", key, b"v", b"PX", b"60000") == b"OK"
        assert await client.execute(b"GET", key) == b"v"
    finally:
        await client.close()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[int]:
    with private_redis(tmp_path, "--requirepass", "s3cret") as url:
        yield int(url.rsplit(":", 1)[1].split("/")[0])


async def test_auth_and_select(password_redis: int) -> None:
    port = password_redis
    client = RedisClient(f"redis://:s3cret@127.0.0.1:{port}/3")
    try:
        assert await client.execute(b"SET", b"k", b"in-db-3") == b"OK"
    finally:
        await client.close()
    other = redis.Redis(host="127.0.0.1", port=port, password="s3cret", db=3)
    assert other.get(b"k") == b"in-db-3"
    assert redis.Redis(host="127.0.0.1", port=port, password="s3cret", db=0).get(b"k") is None
    for url, code in ((f"redis://:wrong@127.0.0.1:{port}/0", "WRONGPASS"), (f"redis://127.0.0.1:{port}/0", "NOAUTH")):
        store = RedisReplayStore(url)
        try:
            with pytest.raises(RequestRejected) as info:
                await store.ping()
            assert info.value.detail == f"refused us ({code})"
            with pytest.raises(RequestRejected) as info:
                await store.remember(replay_key("r", "k", "n"), 10)
            assert info.value.reason is Reason.REPLAY_STORE_UNAVAILABLE
        finally:
            await store.close()


async def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with private_redis(tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700"):
        await eventually(sock.exists)
        store = RedisReplayStore(f"unix://{sock}?db=1")
        try:
            assert await store.remember(replay_key("r", "k", "n"), 10) is True
            assert await store.remember(replay_key("r", "k", "n"), 10) is False
        finally:
            await store.close()


async def test_silence_is_a_timeout_and_the_connection_is_replaced() -> None:
    accepted: list[asyncio.StreamWriter] = []
    answer = asyncio.Event()

    async def mute_then_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while data := await reader.read(65536):
            if answer.is_set():
                writer.write(b"+PONG\r\n" * data.count(b"PING"))

    server = await asyncio.start_server(mute_then_pong, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        with pytest.raises(RedisUnavailable):
            await client.execute(b"PING")
        answer.set()
        assert await client.execute(b"PING") == b"PONG"  # on a new connection: the old one is out of step
        assert client.connections_made == 2
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_refused_connection_is_unavailable() -> None:
    client = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(RedisUnavailable):
            await client.execute(b"PING")
        assert client.connections_made == 0
    finally:
        await client.close()


async def test_a_connection_killed_by_redis_is_replaced(tmp_path: Path) -> None:
    with private_redis(tmp_path) as url:
        client = RedisClient(url)
        try:
            assert await client.execute(b"CLIENT", b"SETNAME", b"hmac-gateway-test") == b"OK"
            redis.Redis.from_url(url).client_kill_filter(_type="normal", skipme=True)
            await eventually(lambda: client._protocol is None or client._protocol.closed)  # the close reaches us
            assert await client.execute(b"PING") == b"PONG"
            assert client.connections_made == 2
        finally:
            await client.close()


async def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"+PONG\r\n+EXTRA\r\n")
        await reader.read(65536)

    server = await asyncio.start_server(chatty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        assert await client.execute(b"PING") == b"PONG"
        await eventually(lambda: client._protocol is not None and client._protocol.closed)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_failed_handshake_leaves_no_socket_behind() -> None:
    """AUTH that never gets an answer times out; each attempt's socket is closed, not leaked."""
    closed = 0
    accepted = 0

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted, closed
        accepted += 1
        while await reader.read(65536):
            pass
        closed += 1
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RedisClient(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=0.1)
    try:
        for _ in range(3):
            with pytest.raises(RedisUnavailable):
                await client.execute(b"PING")
        await eventually(lambda: (accepted, closed) == (3, 3))
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
