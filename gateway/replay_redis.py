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

from gateway.errors import Reason, RequestRejected
from gateway.redis_client import RedisClient, RedisReplyError, RedisUnavailable


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

    async def eviction_policy(self) -> str:
        """Redis's maxmemory-policy, from INFO (CONFIG is often disabled on managed Redis)."""
        try:
            info = await self._client.execute(b"INFO", b"memory")
        except (RedisReplyError, RedisUnavailable):
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        text = info.decode("utf-8", "replace") if isinstance(info, bytes) else ""
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name == "maxmemory_policy":
                return value.strip()
        return "unknown"

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
