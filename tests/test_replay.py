"""The in-process replay store (gateway/replay/memory.py), driven by an injected clock."""

from __future__ import annotations

import gc

import pytest

from gateway.errors import Reason, RequestRejected
from gateway.replay import replay_key
from gateway.replay.memory import MemoryReplayStore

# -- helpers -------------------------------------------------------------------------------

T0 = 1_767_225_600.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(token: str, keyring: str = "ring", key_id: str = "key-v1") -> bytes:
    return replay_key(keyring, key_id, token)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- remember ------------------------------------------------------------------------------


async def test_first_sighting_is_new_and_the_second_is_a_replay(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.remember(key("nonce-1"), ttl=300) is True
    assert await store.remember(key("nonce-1"), ttl=300) is False
    assert await store.remember(key("nonce-2"), ttl=300) is True
    assert len(store) == 2


async def test_entry_expires_after_its_ttl(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.remember(key("n"), ttl=300)
    clock.now = T0 + 299.999
    assert await store.remember(key("n"), ttl=300) is False  # still inside the window
    clock.now = T0 + 300
    assert await store.remember(key("n"), ttl=300) is True  # window over: accepted again
    clock.now = T0 + 400
    assert await store.remember(key("n"), ttl=300) is False  # and remembered anew from T0 + 300


async def test_a_replay_does_not_extend_the_entry(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.remember(key("n"), ttl=100)
    clock.now = T0 + 90
    assert await store.remember(key("n"), ttl=100) is False
    clock.now = T0 + 100
    assert await store.remember(key("n"), ttl=100) is True


async def test_each_entry_keeps_its_own_ttl(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.remember(key("long"), ttl=1000)
    assert await store.remember(key("short"), ttl=10)
    clock.now = T0 + 10
    assert await store.remember(key("short"), ttl=10) is True
    assert await store.remember(key("long"), ttl=1000) is False


async def test_fractional_expiry_is_rounded_up_never_down(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    clock.now = T0 + 0.5
    assert await store.remember(key("n"), ttl=10)  # expires in the bucket of second T0 + 11
    clock.now = T0 + 10.9
    assert await store.remember(key("n"), ttl=10) is False  # past its exact ttl, still remembered
    clock.now = T0 + 11
    assert await store.remember(key("n"), ttl=10) is True


async def test_entries_are_not_tracked_by_the_garbage_collector(clock: FakeClock) -> None:
    """A guard: a million remembered nonces must not become a million objects every full GC walks."""
    store = MemoryReplayStore(clock=clock)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        assert await store.remember(key(f"n{i}"), ttl=300)
    gc.collect()
    assert len(gc.get_objects()) - before < 100


async def test_full_store_rejects_instead_of_evicting(clock: FakeClock) -> None:
    store = MemoryReplayStore(max_entries=2, clock=clock)
    assert await store.remember(key("a"), ttl=100)
    clock.now = T0 + 1
    assert await store.remember(key("b"), ttl=100)
    with pytest.raises(RequestRejected) as info:
        await store.remember(key("c"), ttl=100)
    assert info.value.reason is Reason.REPLAY_STORE_FULL
    assert info.value.reason.status == 503
    assert len(store) == 2
    # nothing was evicted: the oldest entry is still a replay
    assert await store.remember(key("a"), ttl=100) is False
    assert await store.remember(key("b"), ttl=100) is False


async def test_replays_are_still_detected_when_full(clock: FakeClock) -> None:
    store = MemoryReplayStore(max_entries=1, clock=clock)
    assert await store.remember(key("a"), ttl=100)
    assert await store.remember(key("a"), ttl=100) is False  # a replay answer, not "full"


async def test_expired_entries_make_room_again(clock: FakeClock) -> None:
    store = MemoryReplayStore(max_entries=2, clock=clock)
    assert await store.remember(key("a"), ttl=100)
    clock.now = T0 + 50
    assert await store.remember(key("b"), ttl=100)
    with pytest.raises(RequestRejected):
        await store.remember(key("c"), ttl=100)
    clock.now = T0 + 100  # "a" has expired, "b" has not
    assert await store.remember(key("c"), ttl=100) is True
    assert len(store) == 2
    assert await store.remember(key("b"), ttl=100) is False
    with pytest.raises(RequestRejected):
        await store.remember(key("d"), ttl=100)


async def test_close_forgets_everything(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.remember(key("a"), ttl=100)
    await store.close()
    assert len(store) == 0
    assert await store.remember(key("a"), ttl=100) is True


# -- replay_key ----------------------------------------------------------------------------


def test_replay_key_is_32_bytes_and_deterministic() -> None:
    assert len(replay_key("ring", "key-v1", "n")) == 32
    assert len(replay_key("ring", "key-v1", "n" * 100_000)) == 32
    assert replay_key("ring", "key-v1", "n") == replay_key("ring", "key-v1", "n")


def test_replay_key_differs_per_keyring_key_id_and_token() -> None:
    keys = {
        replay_key("ring", "key-v1", "nonce"),
        replay_key("other-ring", "key-v1", "nonce"),
        replay_key("ring", "key-v2", "nonce"),
        replay_key("ring", "key-v1", "nonce2"),
        # moving characters across field boundaries must not collide
        replay_key("ringk", "ey-v1", "nonce"),
        replay_key("ring", "key-v1n", "once"),
    }
    assert len(keys) == 6


async def test_same_token_under_another_key_id_is_not_a_replay(clock: FakeClock) -> None:
    store = MemoryReplayStore(clock=clock)
    assert await store.remember(replay_key("ring", "key-v1", "n"), ttl=100)
    assert await store.remember(replay_key("ring", "key-v2", "n"), ttl=100)
    assert await store.remember(replay_key("other", "key-v1", "n"), ttl=100)
    assert await store.remember(replay_key("ring", "key-v1", "n"), ttl=100) is False
