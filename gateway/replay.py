"""Replay stores: remember (keyring, key id, nonce-or-signature) for as long as it could verify.

Invariant: a full store **rejects** new entries (503 ``replay_store_full``) instead of
evicting live ones, because eviction would reopen the replay window for an attacker who
floods the store. Entries are only ever dropped once their window has passed.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Protocol

from gateway.clock import Clock, system_clock
from gateway.errors import Reason, RequestRejected


def replay_key(keyring: str, key_id: str, token: str) -> bytes:
    """A fixed-size key so an attacker's huge nonce costs us 32 bytes."""
    return hashlib.sha256(f"{keyring}\0{key_id}\0{token}".encode()).digest()


class ReplayStore(Protocol):
    async def remember(self, key: bytes, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds. False if it is already there (a replay)."""
        ...

    async def close(self) -> None: ...


class MemoryReplayStore:
    """The single-instance default: a dict plus an expiry heap, bounded by ``max_entries``."""

    def __init__(self, max_entries: int = 1_000_000, clock: Clock = system_clock) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if expiry.get(key) == when:
                del expiry[key]

    async def remember(self, key: bytes, ttl: float) -> bool:
        now = self.clock()
        self._purge(now)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self.max_entries:
            raise RequestRejected(Reason.REPLAY_STORE_FULL, "try again shortly")
        when = now + ttl
        self._expiry[key] = when
        heapq.heappush(self._heap, (when, key))
        return True

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()
