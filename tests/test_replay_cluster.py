"""The replay store against a real Redis Cluster: three redis-server processes on loopback in
cluster mode, created here with ``redis-cli --cluster create`` (redis-cli comes with Debian's
redis-tools, a dependency of the redis-server package .ci/run installs) and stopped by PID."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from gateway.errors import Reason, ReplayStoreError, RequestRejected
from gateway.replay import replay_key
from gateway.replay.cluster import crc16, key_slot, parse_cluster_nodes
from gateway.replay.redis import RedisReplayStore
from tests.support import free_port


@dataclass
class Cluster:
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node(self, i: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=2)

    def node_id(self, i: int) -> str:
        return str(self.node(i).execute_command("CLUSTER", "MYID").decode())

    def holder(self, name: bytes) -> int:
        """Which node holds ``name`` (asked of each node directly: not through our client)."""
        holders = [i for i in range(len(self.ports)) if self.procs[i].poll() is None and self._has(i, name)]
        assert len(holders) == 1, holders
        return holders[0]

    def _has(self, i: int, name: bytes) -> bool:
        try:
            return bool(self.node(i).exists(name))
        except redis.ResponseError:  # MOVED / ASK: not this node's slot
            return False

    def has_importing(self, i: int, name: bytes) -> bool:
        """Whether node ``i`` holds ``name`` in a slot it is importing (asked after ASKING)."""
        node = redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=2, single_connection_client=True)
        try:
            node.execute_command("ASKING")
            return bool(node.exists(name))
        finally:
            node.close()

    def owner(self, slot: int) -> int:
        """Which node owns ``slot``, by node 0's CLUSTER SLOTS (redis-py's parser, not ours)."""
        for lo, hi, primary, *_ in self.node(0).execute_command("CLUSTER", "SLOTS"):
            if lo <= slot <= hi:
                return self.ports.index(int(primary[1]))
        raise AssertionError(f"slot {slot} is not served")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def start_cluster(tmp: Path, size: int = 3) -> Cluster:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.fail("redis-server and redis-cli are needed (.ci/run installs redis-server, which brings redis-tools)")
    cluster = Cluster([], [])
    try:
        for i in range(size):
            port, bus = free_port(), free_port()  # bus given: port + 10000 may be past 65535
            (tmp / str(i)).mkdir()
            # Popen, not a daemonized server: we hold each PID and stop exactly those.
            cluster.procs.append(
                subprocess.Popen(
                    [
                        *(server, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1"),
                        *(
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--dir",
                            str(tmp / str(i)),
                        ),
                        *("--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            cluster.ports.append(port)
        for i in range(size):
            _wait(lambda i=i: cluster.node(i).ping())
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in cluster.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            timeout=30,
            capture_output=True,
        )
        for i in range(size):
            _wait(lambda i=i: b"cluster_state:ok" in cluster.node(i).execute_command("CLUSTER", "INFO"))
            _wait(lambda i=i: len(cluster.node(i).execute_command("CLUSTER", "SLOTS")) == size)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(ready: object, seconds: float = 15.0) -> None:
    assert callable(ready)
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the test cluster did not get ready in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def prefix() -> str:
    return f"hmac-gateway-test:{uuid.uuid4().hex[:8]}:"


def _name(prefix: str, key: bytes) -> bytes:
    return prefix.encode() + key.hex().encode()


def _key_in_slot(prefix: str, slot: int, salt: str = "") -> bytes:
    """A replay key whose stored name hashes to ``slot`` (bounded search: ~16k tries expected)."""
    for i in range(400_000):
        key = replay_key("ring", "k", f"slot-{slot}-{salt}{i}")
        if key_slot(_name(prefix, key)) == slot:
            return key
    raise AssertionError("no key found for the slot")


def test_key_slots_match_redis(cluster: Cluster) -> None:
    assert crc16(b"123456789") == 0x31C3  # the Redis Cluster spec's check value
    names = [b"", b"a", b"{user1000}.following", b"x{}y", b"{}{a}", b"p{a", b"hmac-gateway:replay:" + b"ab" * 32]
    names += [_name("hmac-gateway:replay:", replay_key("r", "k", str(i))) for i in range(50)]
    for name in names:
        assert key_slot(name) == cluster.node(0).execute_command("CLUSTER", "KEYSLOT", name), name
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")


def test_parse_cluster_nodes_skips_replicas_failed_primaries_and_migrations() -> None:
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n"
        "b2 10.0.0.2:7001@17001,node-b.example master - 0 0 2 connected 5461-10922\n"
        "c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383\n"
        "d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n"
        "e5 :7004@17004 myself,master - 0 0 4 connected 16000\n"
    )
    assert parse_cluster_nodes(text, "seed") == {
        ("127.0.0.1", 7000): [(0, 5460)],
        ("node-b.example", 7001): [(5461, 10922)],
        ("seed", 7004): [(16000, 16000)],
    }


async def test_keys_land_on_every_node_and_replays_are_refused_whichever_holds_them(
    cluster: Cluster, prefix: str
) -> None:
    store = RedisReplayStore(cluster.url, prefix=prefix, cluster=True)
    keys = [replay_key("ring", "key-v1", f"nonce-{i}") for i in range(60)]
    try:
        # all at once on a fresh store, as a burst of requests at start-up would: they wait for one slot map
        assert await asyncio.gather(*(store.remember(k, 301.0) for k in keys)) == [True] * 60
        holders = [cluster.holder(_name(prefix, k)) for k in keys]
        assert set(holders) == {0, 1, 2}
        assert holders == [cluster.owner(key_slot(_name(prefix, k))) for k in keys]
        ttl_ms = cluster.node(holders[0]).pttl(_name(prefix, keys[0]))
        assert 300_000 < ttl_ms <= 301_000
        assert [await store.remember(k, 301.0) for k in keys] == [False] * 60
    finally:
        await store.close()
    # another instance (a fresh store: its own connections and slot map) refuses them too
    other = RedisReplayStore(f"redis://127.0.0.1:{cluster.ports[2]}", prefix=prefix, cluster=True)
    try:
        assert [await other.remember(k, 301.0) for k in keys] == [False] * 60
    finally:
        await other.close()


async def test_single_node_mode_against_a_cluster_fails_closed_on_a_redirection(cluster: Cluster, prefix: str) -> None:
    store = RedisReplayStore(cluster.url, prefix=prefix)  # redis_cluster not set
    keys = [replay_key("ring", "k", f"n{i}") for i in range(20)]
    try:
        with pytest.raises(RequestRejected) as err:
            for k in keys:  # some of these live on another node: MOVED, never followed here
                await store.remember(k, 10.0)
        assert err.value.reason is Reason.REPLAY_STORE_UNAVAILABLE
    finally:
        await store.close()


async def test_check_asks_every_primary(cluster: Cluster, prefix: str) -> None:
    store = RedisReplayStore(cluster.url, prefix=prefix, cluster=True)
    try:
        warnings = await store.check()
        assert len(warnings) == 3  # appendonly no, named per node
        for port in cluster.ports:
            assert sum(f"node 127.0.0.1:{port} has no append-only file" in w for w in warnings) == 1
        cluster.node(2).config_set("maxmemory-policy", "allkeys-lru")
        try:
            with pytest.raises(ReplayStoreError, match=f"node 127.0.0.1:{cluster.ports[2]} uses maxmemory-policy"):
                await store.check()
        finally:
            cluster.node(2).config_set("maxmemory-policy", "noeviction")
    finally:
        await store.close()
    with_db = RedisReplayStore(cluster.url + "/3", prefix=prefix, cluster=True)
    try:
        with pytest.raises(ReplayStoreError, match="only database 0"):
            await with_db.check()
    finally:
        await with_db.close()


async def test_full_node_is_replay_store_full(cluster: Cluster, prefix: str) -> None:
    store = RedisReplayStore(cluster.url, prefix=prefix, cluster=True)
    key = replay_key("ring", "k", "oom")
    node = cluster.owner(key_slot(_name(prefix, key)))
    cluster.node(node).config_set("maxmemory", "1")  # below what it already uses: every write is OOM
    try:
        with pytest.raises(RequestRejected) as err:
            await store.remember(key, 10.0)
        assert err.value.reason is Reason.REPLAY_STORE_FULL
    finally:
        cluster.node(node).config_set("maxmemory", "0")
        await store.close()


async def test_ask_during_a_migration_and_moved_after_it_are_followed(cluster: Cluster, prefix: str) -> None:
    store = RedisReplayStore(cluster.url, prefix=prefix, cluster=True)
    first = replay_key("ring", "k", "moving")
    slot = key_slot(_name(prefix, first))
    source = cluster.owner(slot)
    target = (source + 1) % 3
    try:
        assert await store.remember(first, 300.0) is True  # also loads the slot map
        assert cluster.holder(_name(prefix, first)) == source
        src, dst = cluster.node(source), cluster.node(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target))
        # A new key in the migrating slot: the source answers ASK, the target takes it after ASKING.
        second = _key_in_slot(prefix, slot)
        assert await store.remember(second, 300.0) is True
        assert cluster.has_importing(target, _name(prefix, second))
        with pytest.raises(redis.exceptions.AskError):  # the source's way of saying "not here"
            cluster.node(source).exists(_name(prefix, second))
        assert await store.remember(second, 300.0) is False  # ASK again, and the target has it
        # Finish the move: the key goes over, every node learns the new owner.
        src.execute_command("MIGRATE", "127.0.0.1", cluster.ports[target], "", 0, 5000, "KEYS", _name(prefix, first))
        for i in range(3):
            cluster.node(i).execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(target))
        assert cluster.holder(_name(prefix, first)) == target
        # Our slot map still says source: MOVED, followed to the target, which has the key.
        assert await store.remember(first, 300.0) is False
        third = _key_in_slot(prefix, slot, salt="after")
        assert await store.remember(third, 300.0) is True
        assert cluster.holder(_name(prefix, third)) == target
    finally:
        await store.close()


async def test_a_node_down_fails_its_keys_closed(tmp_path: Path, prefix: str) -> None:
    cluster = start_cluster(tmp_path)
    store = RedisReplayStore(cluster.url, prefix=prefix, cluster=True, timeout=0.3)
    try:
        keys = [replay_key("ring", "k", f"down-{i}") for i in range(30)]
        assert [await store.remember(k, 300.0) for k in keys] == [True] * 30
        on = {node: [k for k in keys if cluster.holder(_name(prefix, k)) == node] for node in range(3)}
        cluster.procs[2].terminate()  # by its PID; not the seed node of the URL
        cluster.procs[2].wait(10)
        for k in on[2]:  # a replay of a key the stopped node holds: refused, never re-admitted elsewhere
            with pytest.raises(RequestRejected) as err:
                await store.remember(k, 300.0)
            assert err.value.reason is Reason.REPLAY_STORE_UNAVAILABLE
        for k in on[0] + on[1]:
            assert await store.remember(k, 300.0) is False
        fresh = _key_in_slot(prefix, key_slot(_name(prefix, on[2][0])))
        with pytest.raises(RequestRejected) as err:
            await store.remember(fresh, 300.0)
        assert err.value.reason is Reason.REPLAY_STORE_UNAVAILABLE
        with pytest.raises(ReplayStoreError):
            await store.check()  # start-up would stop: one primary does not answer
    finally:
        await store.close()
        cluster.stop()


async def test_a_moved_slot_makes_the_whole_map_reread(
    cluster: Cluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.replay.cluster.REFRESH_INTERVAL", 0.0)  # no waiting through the 1 s spacing
    store = RedisReplayStore(cluster.url, prefix=prefix, cluster=True)
    first, second = replay_key("ring", "k", "reread-1"), replay_key("ring", "k", "reread-2")
    slots = [key_slot(_name(prefix, k)) for k in (first, second)]
    owners = [cluster.owner(slot) for slot in slots]
    target = next(i for i in range(3) if i not in owners)
    try:
        assert await store.remember(replay_key("ring", "k", "warm-up"), 300.0) is True  # the map, read once
        for slot in slots:  # both slots are empty: moving them needs no MIGRATE
            for i in range(3):
                cluster.node(i).execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(target))
        assert await store.remember(first, 300.0) is True  # MOVED: followed, and the map re-read behind it
        assert cluster.holder(_name(prefix, first)) == target
        for _ in range(200):  # bounded: the background re-read is one CLUSTER NODES on loopback
            if store._cluster is not None and store._cluster._slots[slots[1]] == ("127.0.0.1", cluster.ports[target]):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the slot map was not re-read after MOVED")
        assert await store.remember(second, 300.0) is True
        assert cluster.holder(_name(prefix, second)) == target
    finally:
        await store.close()
