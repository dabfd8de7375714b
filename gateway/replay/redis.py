"""The shared replay store: Redis, ``SET key 1 NX PX ttl``. For several gateway instances (or
``serve --workers N``) that must refuse a replay whichever process it reaches.

Invariants:
- fail closed: if Redis cannot be asked, the request is refused (503
  ``replay_store_unavailable``), never forwarded unchecked;
- reject, never evict: run Redis with ``maxmemory-policy noeviction``; when it is full, SET
  fails with OOM and the request gets 503 ``replay_store_full``;
- keys are fixed-size hashes (see ``replay.replay_key``) under a configurable prefix.
"""

from __future__ import annotations

from gateway.errors import Reason, ReplayStoreError, RequestRejected
from gateway.replay.resp import RedisClient, RedisReplyError, RedisUnavailable


class RedisReplayStore:
    def __init__(self, url: str, *, prefix: str = "hmac-gateway:replay:", timeout: float = 0.5) -> None:
        self.prefix = prefix.encode()
        self._client = RedisClient(url, timeout=timeout)

    async def ping(self) -> None:
        """Raise RequestRejected(replay_store_unavailable) unless Redis answers."""
        try:
            await self._client.execute(b"PING")
        except RedisReplyError as exc:  # e.g. WRONGPASS, NOAUTH: say which, never the password
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, f"refused us ({exc.code})") from None
        except RedisUnavailable:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None

    async def _info(self, section: bytes) -> dict[str, str]:
        """One INFO section as {field: value} (CONFIG is often disabled on managed Redis; INFO is not)."""
        try:
            info = await self._client.execute(b"INFO", section)
        except (RedisReplyError, RedisUnavailable):
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        text = info.decode("utf-8", "replace") if isinstance(info, bytes) else ""
        fields = (line.partition(":") for line in text.splitlines() if not line.startswith("#"))
        return {name: value.strip() for name, sep, value in fields if sep}

    async def eviction_policy(self) -> str:
        return (await self._info(b"memory")).get("maxmemory_policy", "unknown")

    def size(self) -> int | None:
        """Unknown here: the entries are shared by every instance (DBSIZE would count them all)."""
        return None

    async def check(self) -> list[str]:
        """Fail unless Redis answers and never evicts; warn when it would lose entries on restart.

        Without AOF, a restart (or a failover to a replica that had not caught up) forgets the
        entries written since the last snapshot: exactly the recent ones, whose signatures are
        still inside the freshness window, so those replays would pass once more.
        """
        try:
            await self.ping()
            policy = await self.eviction_policy()
            persistence = await self._info(b"persistence")
            replication = await self._info(b"replication")
        except RequestRejected as exc:
            said = "does not answer" if exc.detail == "replay store unreachable" else exc.detail
            raise ReplayStoreError(f"the Redis replay store {said}") from None
        if policy != "noeviction":
            # Any eviction policy may drop live replay keys under memory pressure, and a
            # dropped key is a replay that passes.
            raise ReplayStoreError(
                f"the Redis replay store uses maxmemory-policy {policy}; it must be noeviction "
                "(an evicted key would let a replay through)"
            )
        warnings = []
        if persistence.get("aof_enabled") != "1":
            warnings.append(
                "the Redis replay store has no append-only file (appendonly no): a Redis restart would forget "
                "recent entries and let replays of still-fresh signatures through once; see README "
                "'What Redis must guarantee'"
            )
        if replication.get("role") == "slave":
            warnings.append("the Redis replay store is a replica; point redis_url at the primary")
        return warnings

    async def remember(self, key: bytes, ttl: float) -> bool:
        try:
            reply = await self._client.execute(
                b"SET", self.prefix + key.hex().encode(), b"1", b"NX", b"PX", b"%d" % max(1, int(ttl * 1000))
            )
        except RedisReplyError as exc:
            if exc.code == "OOM":  # maxmemory reached under noeviction: full, so refuse
                raise RequestRejected(Reason.REPLAY_STORE_FULL, "try again shortly") from None
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store refused the write") from None
        except RedisUnavailable:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        return reply is not None  # +OK: first sighting; nil: the key was there (a replay)

    async def close(self) -> None:
        await self._client.close()
