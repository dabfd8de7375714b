"""The in-process replay store: the single-instance default.

Invariant: a full store **rejects** new entries (503 ``replay_store_full``) instead of
evicting live ones, because eviction would reopen the replay window for an attacker who
floods the store. Entries are only ever dropped once their window has passed.
"""

from __future__ import annotations

import heapq
import math

from gateway.clock import Clock, system_clock
from gateway.errors import Reason, RequestRejected


class MemoryReplayStore:
    """The single-instance default: a set of keys plus expiry buckets, bounded by ``max_entries``.

    Keys are grouped by the whole second they expire in (rounded up, so an entry is never
    forgotten early; the verify route's TTLs end on whole seconds anyway). No per-entry
    timestamp or heap tuple is kept: about 115 bytes per entry including the 32-byte key, as
    bench/memory.py measures it (a dict plus an expiry heap took about 210), and the only
    objects the garbage collector tracks are one list per second.
    """

    def __init__(self, max_entries: int = 1_000_000, clock: Clock = system_clock) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._keys: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}
        self._seconds: list[int] = []  # a heap of the buckets' seconds

    def __len__(self) -> int:
        return len(self._keys)

    def _purge(self, now: float) -> None:
        seconds, buckets, keys = self._seconds, self._buckets, self._keys
        while seconds and seconds[0] <= now:
            for expired in buckets.pop(heapq.heappop(seconds)):
                keys.discard(expired)

    async def remember(self, key: bytes, ttl: float) -> bool:
        now = self.clock()
        if self._seconds and self._seconds[0] <= now:
            self._purge(now)
        if key in self._keys:
            return False
        if len(self._keys) >= self.max_entries:
            raise RequestRejected(Reason.REPLAY_STORE_FULL, "try again shortly")
        self._keys.add(key)
        second = math.ceil(now + ttl)
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = bucket = []
            heapq.heappush(self._seconds, second)
        bucket.append(key)
        return True

    def size(self) -> int | None:
        return len(self._keys)

    async def check(self) -> list[str]:
        """Nothing to check: the store lives and dies with this process."""
        return []

    async def close(self) -> None:
        self._keys.clear()
        self._buckets.clear()
        self._seconds.clear()
