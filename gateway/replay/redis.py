"""The shared replay store: Redis, ``SET key 1 NX PX ttl``. For several gateway instances (or
``serve --workers N``) that must refuse a replay whichever process it reaches.

Invariants:
- fail closed: if Redis cannot be asked, the request is refused (503
  ``replay_store_unavailable``), never forwarded unchecked;
- reject, never evict: run Redis with ``maxmemory-policy noeviction``; when it is full, SET
  fails with OOM and the request gets 503 ``replay_store_full``;
- keys are fixed-size hashes (see ``replay.replay_key``) under a configurable prefix;
- in cluster mode (``cluster=True``) each key goes to the primary owning its slot (see
  ``cluster``), and the start-up checks hold for every primary.
"""

from __future__ import annotations

from gateway.errors import Reason, ReplayStoreError, RequestRejected
from gateway.replay.cluster import ClusterClient
from gateway.replay.resp import RedisClient, RedisReplyError, RedisUnavailable, Reply


class RedisReplayStore:
    def __init__(
        self, url: str, *, prefix: str = "hmac-gateway:replay:", timeout: float = 0.5, cluster: bool = False
    ) -> None:
        self.prefix = prefix.encode()
        self._client = RedisClient(url, timeout=timeout)
        self._cluster = ClusterClient(url, timeout=timeout) if cluster else None

    async def _execute_keyed(self, key: bytes, *args: bytes) -> Reply:
        if self._cluster is not None:
            return await self._cluster.execute_keyed(key, *args)
        return await self._client.execute(*args)

    async def _nodes(self) -> list[RedisClient]:
        """The node (or, in a cluster, every primary) the start-up checks must hold for."""
        if self._cluster is None:
            return [self._client]
        try:
            return await self._cluster.primaries()
        except RedisReplyError as exc:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, f"refused us ({exc.code})") from None
        except RedisUnavailable:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None

    async def ping(self, client: RedisClient | None = None) -> None:
        """Raise RequestRejected(replay_store_unavailable) unless Redis answers."""
        try:
            await (client or self._client).execute(b"PING")
        except RedisReplyError as exc:  # e.g. WRONGPASS, NOAUTH: say which, never the password
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, f"refused us ({exc.code})") from None
        except RedisUnavailable:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None

    async def _info(self, section: bytes, client: RedisClient | None = None) -> dict[str, str]:
        """One INFO section as {field: value} (CONFIG is often disabled on managed Redis; INFO is not)."""
        try:
            info = await (client or self._client).execute(b"INFO", section)
        except (RedisReplyError, RedisUnavailable):
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        text = info.decode("utf-8", "replace") if isinstance(info, bytes) else ""
        fields = (line.partition(":") for line in text.splitlines() if not line.startswith("#"))
        return {name: value.strip() for name, sep, value in fields if sep}

    async def eviction_policy(self, client: RedisClient | None = None) -> str:
        return (await self._info(b"memory", client)).get("maxmemory_policy", "unknown")

    def size(self) -> int | None:
        """Unknown here: the entries are shared by every instance (DBSIZE would count them all)."""
        return None

    async def check(self) -> list[str]:
        """Fail unless Redis (every primary of a cluster) answers and never evicts; warn when it
        would lose entries on restart.

        Without AOF, a restart (or a failover to a replica that had not caught up) forgets the
        entries written since the last snapshot: exactly the recent ones, whose signatures are
        still inside the freshness window, so those replays would pass once more.
        """
        if self._cluster is not None and self._cluster.seed.db:
            raise ReplayStoreError("redis_cluster: a Redis cluster has only database 0; drop the /db from redis_url")
        try:
            nodes = await self._nodes()
        except RequestRejected as exc:
            said = "does not answer" if exc.detail == "replay store unreachable" else exc.detail
            raise ReplayStoreError(f"the Redis replay store {said}") from None
        warnings: list[str] = []
        for client in nodes:
            # Named per node in a cluster: one primary left with another policy is enough to lose keys.
            where = f" node {client.address.host}:{client.address.port}" if self._cluster else ""
            for warning in await self._check_node(client, where):
                if warning not in warnings:
                    warnings.append(warning)
        return warnings

    async def _check_node(self, client: RedisClient, where: str) -> list[str]:
        try:
            await self.ping(client)
            policy = await self.eviction_policy(client)
            persistence = await self._info(b"persistence", client)
            replication = await self._info(b"replication", client)
        except RequestRejected as exc:
            said = "does not answer" if exc.detail == "replay store unreachable" else exc.detail
            raise ReplayStoreError(f"the Redis replay store{where} {said}") from None
        if policy != "noeviction":
            # Any eviction policy may drop live replay keys under memory pressure, and a
            # dropped key is a replay that passes.
            raise ReplayStoreError(
                f"the Redis replay store{where} uses maxmemory-policy {policy}; it must be noeviction "
                "(an evicted key would let a replay through)"
            )
        warnings = []
        if persistence.get("aof_enabled") != "1":
            warnings.append(
                f"the Redis replay store{where} has no append-only file (appendonly no): a Redis restart would "
                "forget recent entries and let replays of still-fresh signatures through once; see README "
                "'What Redis must guarantee'"
            )
        if replication.get("role") == "slave":
            warnings.append("the Redis replay store is a replica; point redis_url at the primary")
        return warnings

    async def remember(self, key: bytes, ttl: float) -> bool:
        try:
            name = self.prefix + key.hex().encode()
            reply = await self._execute_keyed(name, b"SET", name, b"1", b"NX", b"PX", b"%d" % max(1, int(ttl * 1000)))
        except RedisReplyError as exc:
            if exc.code == "OOM":  # maxmemory reached under noeviction: full, so refuse
                raise RequestRejected(Reason.REPLAY_STORE_FULL, "try again shortly") from None
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store refused the write") from None
        except RedisUnavailable:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        return reply is not None  # +OK: first sighting; nil: the key was there (a replay)

    async def close(self) -> None:
        await self._client.close()
        if self._cluster is not None:
            await self._cluster.close()
