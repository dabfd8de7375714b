"""Replay stores: remember (keyring, key id, nonce-or-signature) for as long as it could verify.

Two stores keep the same contract: ``memory`` (one process, the default) and ``redis``
(shared by ``serve --workers N`` and by several gateway instances). Each checks itself at
start-up (``check``), so the server needs to know nothing about either. ``factory`` opens the
configured one; this module imports neither store, so config can read ``ReplaySettings``
without loading the Redis client.

Invariants:
- a full store **rejects** new entries (503 ``replay_store_full``) instead of evicting live
  ones: eviction would reopen the replay window for an attacker who floods the store;
- a store that cannot be asked fails closed (503 ``replay_store_unavailable``);
- keys are fixed-size hashes, so an attacker's huge nonce costs 32 bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["STORES", "ReplaySettings", "ReplayStore", "replay_key"]

STORES = ("memory", "redis")


def replay_key(keyring: str, key_id: str, token: str) -> bytes:
    """A fixed-size key so an attacker's huge nonce costs us 32 bytes."""
    return hashlib.sha256(f"{keyring}\0{key_id}\0{token}".encode()).digest()


class ReplayStore(Protocol):
    async def remember(self, key: bytes, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds. False if it is already there (a replay)."""
        ...

    def size(self) -> int | None:
        """Entries held by this process, for metrics; None when the store is shared."""
        ...

    async def check(self) -> list[str]:
        """Start-up check: raise ``ReplayStoreError`` if the store cannot do its job; return
        warnings (one line each) about guarantees it cannot confirm."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    store: str = "memory"  # "memory" (one process) or "redis" (shared)
    max_entries: int = 1_000_000  # the memory store's bound
    redis_url: str = field(default="", repr=False)  # may carry a password: never shown whole
    key_prefix: str = "hmac-gateway:replay:"
    cluster: bool = False  # Redis in cluster mode: route each key to its slot's primary

    @property
    def shared(self) -> bool:
        """True when every process and instance sees the same entries."""
        return self.store == "redis"
