"""Open the configured replay store."""

from __future__ import annotations

from gateway.clock import Clock, system_clock
from gateway.replay import ReplaySettings, ReplayStore
from gateway.replay.memory import MemoryReplayStore
from gateway.replay.redis import RedisReplayStore


def open_replay_store(settings: ReplaySettings, clock: Clock = system_clock) -> ReplayStore:
    if settings.store == "redis":
        return RedisReplayStore(settings.redis_url, prefix=settings.key_prefix, cluster=settings.cluster)
    return MemoryReplayStore(settings.max_entries, clock=clock)
