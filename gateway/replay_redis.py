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

import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import Reason, RequestRejected


class RedisReplayStore:
    def __init__(self, url: str, *, prefix: str = "hmac-gateway:replay:", timeout: float = 0.5) -> None:
        self.prefix = prefix.encode()
        self._client = redis_asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )

    async def ping(self) -> None:
        """Raise RequestRejected(replay_store_unavailable) unless Redis answers."""
        try:
            await self._client.ping()
        except (RedisError, OSError):
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None

    async def eviction_policy(self) -> str:
        """Redis's maxmemory-policy, from INFO (CONFIG is often disabled on managed Redis)."""
        try:
            info = await self._client.info("memory")
        except (RedisError, OSError):
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        return str(info.get("maxmemory_policy", "unknown"))

    async def remember(self, key: bytes, ttl: float) -> bool:
        try:
            created = await self._client.set(
                self.prefix + key.hex().encode(), b"1", nx=True, px=max(1, int(ttl * 1000))
            )
        except OutOfMemoryError:  # maxmemory reached under noeviction: full, so refuse
            raise RequestRejected(Reason.REPLAY_STORE_FULL, "try again shortly") from None
        except ResponseError:
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store refused the write") from None
        except (RedisConnectionError, RedisTimeoutError, RedisError, OSError):
            raise RequestRejected(Reason.REPLAY_STORE_UNAVAILABLE, "replay store unreachable") from None
        return bool(created)

    async def close(self) -> None:
        await self._client.aclose()
