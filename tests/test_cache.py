"""The per-process keyring cache (gateway/keys/cache.py), driven by an injected key source and clock."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest

from gateway.clock import to_rfc3339
from gateway.errors import KeyringFormatError, SourceError
from gateway.keys.cache import KeyringCache
from gateway.keys.settings import RefreshPolicy
from gateway.keys.sources import Document

# -- helpers -------------------------------------------------------------------------------

SECRET_1 = "cache-secret-one-0123456789-abcdefghijkl"
SECRET_2 = "cache-secret-two-0123456789-abcdefghijkl"
SHORT = "short-cache-secret-xyz"  # 22 bytes: refused
T0 = 1_767_225_600.0


def flat(**keys: str) -> bytes:
    return json.dumps(keys).encode()


GOOD = Document(flat(**{"key-v1": SECRET_1}), "v1")
GOOD_2 = Document(flat(**{"key-v1": SECRET_1, "key-v2": SECRET_2}), "v2")


class FakeClock:
    """A mutable float the code under test reads as "now"."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StubSource:
    """An injected KeySource: returns ``result`` (or raises it), counts calls and can hold a load in
    flight until ``release()``."""

    description = "stub:ring"

    def __init__(self, result: Document | Exception = GOOD) -> None:
        self.result = result
        self.calls = 0
        self.entered = threading.Event()
        self._gate: threading.Event | None = None
        self._lock = threading.Lock()

    def hold(self) -> None:
        self.entered.clear()
        self._gate = threading.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    def load(self) -> Document:
        with self._lock:
            self.calls += 1
        self.entered.set()
        gate = self._gate
        if gate is not None and not gate.wait(timeout=10):
            raise RuntimeError("test never released the held load")
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def source() -> Iterator[StubSource]:
    stub = StubSource()
    yield stub
    stub.release()  # never leave a worker thread blocked


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(
    source: StubSource,
    clock: FakeClock | None = None,
    *,
    rand: Callable[[], float] = lambda: 0.5,
    **policy: float,
) -> KeyringCache:
    return KeyringCache("ring", source, policy=RefreshPolicy(**policy), clock=clock or FakeClock(), rand=rand)


async def wait_for_thread_entry(source: StubSource) -> None:
    assert await asyncio.to_thread(source.entered.wait, 5), "the source was never called"


async def early_refresh_load(cache: KeyringCache, source: StubSource) -> None:
    """Request an early refresh, prove it started a load on its own, and wait for that load."""
    source.hold()
    assert cache.request_early_refresh() is True
    await wait_for_thread_entry(source)
    joined = asyncio.ensure_future(cache.refresh())  # joins the held flight: no extra load
    await asyncio.sleep(0)
    source.release()
    assert await joined is True
    await asyncio.sleep(0)  # let the background task finish too


async def gather_while_held(source: StubSource, *calls: Awaitable[bool]) -> list[bool]:
    source.hold()
    tasks = [asyncio.ensure_future(c) for c in calls]
    await wait_for_thread_entry(source)
    for _ in range(5):
        await asyncio.sleep(0)  # let every task reach refresh() while the load is held
    source.release()
    return list(await asyncio.gather(*tasks))


# -- loading and single flight ---------------------------------------------------------------


async def test_nothing_loaded_before_the_first_refresh(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock)
    assert cache.keyring is None
    assert not cache.is_ready(clock.now)
    assert cache.age(clock.now) is None
    assert source.calls == 0


async def test_first_refresh_loads_the_keyring(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock)
    assert await cache.refresh() is True
    assert cache.keyring is not None
    assert cache.keyring.signing_key_id == "key-v1"
    assert cache.keyring.version_id == "v1"
    assert cache.loaded_at == T0
    assert cache.loads == 1
    assert cache.is_ready(clock.now)


async def test_keyring_encoding_is_used_for_parsing(source: StubSource) -> None:
    source.result = Document(flat(k=bytes(range(32)).hex()), "v1")
    cache = KeyringCache("ring", source, encoding="hex", rand=lambda: 0.5)
    assert await cache.refresh()
    assert cache.keyring is not None
    assert cache.keyring.signing_key.material == bytes(range(32))


async def test_concurrent_refreshes_collapse_into_one_load(source: StubSource) -> None:
    cache = make_cache(source)
    results = await gather_while_held(source, *(cache.refresh() for _ in range(50)))
    assert results == [True] * 50
    assert source.calls == 1
    assert cache.loads == 1
    # the flight is over: the next refresh loads again
    assert await cache.refresh()
    assert source.calls == 2


async def test_concurrent_failing_refreshes_count_one_failure(source: StubSource) -> None:
    source.result = SourceError("stub: unreachable")
    cache = make_cache(source)
    results = await gather_while_held(source, *(cache.refresh() for _ in range(50)))
    assert results == [False] * 50
    assert source.calls == 1
    assert cache.failures == 1


async def test_cancelled_caller_does_not_cancel_the_shared_load(source: StubSource) -> None:
    cache = make_cache(source)
    source.hold()
    first = asyncio.ensure_future(cache.refresh())
    await wait_for_thread_entry(source)
    second = asyncio.ensure_future(cache.refresh())
    await asyncio.sleep(0)
    first.cancel()
    source.release()
    assert await second is True
    assert cache.keyring is not None
    assert source.calls == 1


# -- last good keyring -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (SourceError("stub:ring: cannot read keyring: Permission denied"), "Permission denied"),
        (KeyringFormatError("keyring 'ring': the secret is not valid JSON"), "not valid JSON"),
        (Document(b'{"key-v1": "' + SECRET_2.encode() + b'",', "v9"), "not valid JSON"),
        (Document(flat(**{"key-v1": SECRET_1, "key-short": SHORT}), "v9"), "'key-short'"),
        (Document(b"[]", "v9"), "expected a JSON object"),
        (RuntimeError(f"library surprise leaking {SECRET_2}"), "unexpected RuntimeError from stub:ring"),
    ],
    ids=["source-error", "format-error", "invalid-json", "short-key", "not-an-object", "unexpected"],
)
async def test_failed_load_keeps_the_last_good_keyring(
    source: StubSource,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    failure: Document | Exception,
    expected: str,
) -> None:
    cache = make_cache(source, clock)
    assert await cache.refresh()
    good = cache.keyring
    source.result = failure
    clock.now = T0 + 30
    with caplog.at_level(logging.DEBUG, logger="gateway.keys"):
        assert await cache.refresh() is False
    assert cache.keyring is good  # still serving the last good snapshot
    assert cache.loaded_at == T0  # staleness keeps growing
    assert cache.failures == 1
    assert cache.last_error is not None
    assert expected in cache.last_error
    assert cache.last_error_at == T0 + 30
    for secret in (SECRET_1, SECRET_2, SHORT):
        assert secret not in cache.last_error
        for record in caplog.records:
            assert secret not in record.getMessage()
            assert all(secret not in str(value) for value in vars(record).values())
    assert any(r.getMessage() == "keyring refresh failed" for r in caplog.records)


async def test_failures_accumulate_and_recovery_resets_them(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock)
    assert await cache.refresh()
    source.result = SourceError("stub: down")
    for i in range(3):
        clock.now = T0 + i
        assert not await cache.refresh()
    assert cache.failures == 3
    assert cache.last_error == "stub: down"
    assert cache.loads == 4
    source.result = GOOD_2
    clock.now = T0 + 100
    assert await cache.refresh()
    assert cache.failures == 0
    assert cache.last_error is None
    assert cache.loaded_at == T0 + 100
    assert cache.keyring is not None
    assert cache.keyring.signing_key_id == "key-v2"


async def test_first_load_failing_leaves_nothing_loaded(source: StubSource, clock: FakeClock) -> None:
    source.result = SourceError("stub: down")
    cache = make_cache(source, clock)
    assert not await cache.refresh()
    assert cache.keyring is None
    assert not cache.is_ready(clock.now)
    assert cache.failures == 1


# -- version ids -----------------------------------------------------------------------------


async def test_unchanged_version_id_reuses_the_same_keyring_object(source: StubSource) -> None:
    cache = make_cache(source)
    assert await cache.refresh()
    first = cache.keyring
    assert await cache.refresh()
    assert cache.keyring is first
    # Same version id, different bytes: not even parsed (the version id is trusted).
    source.result = Document(b"not json at all", "v1")
    assert await cache.refresh()
    assert cache.keyring is first
    assert cache.failures == 0


async def test_changed_version_id_is_parsed(source: StubSource) -> None:
    cache = make_cache(source)
    assert await cache.refresh()
    first = cache.keyring
    source.result = GOOD_2
    assert await cache.refresh()
    assert cache.keyring is not first
    assert cache.keyring is not None
    assert cache.keyring.version_id == "v2"
    assert cache.keyring.signing_key_id == "key-v2"


async def test_empty_version_id_is_always_parsed(source: StubSource) -> None:
    source.result = Document(GOOD.data, "")
    cache = make_cache(source)
    assert await cache.refresh()
    first = cache.keyring
    assert await cache.refresh()
    assert cache.keyring is not first
    assert cache.keyring == first


async def test_unchanged_version_still_counts_as_a_fresh_load(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock, max_staleness=100)
    assert await cache.refresh()
    clock.now = T0 + 90
    assert await cache.refresh()
    assert cache.loaded_at == T0 + 90
    assert cache.is_ready(T0 + 150)


# -- refresh delays ----------------------------------------------------------------------------


async def test_next_delay_backs_off_exponentially_up_to_the_cap(source: StubSource) -> None:
    cache = make_cache(source, interval=30, backoff_initial=1, backoff_cap=60)
    assert cache.next_delay() == 30
    source.result = SourceError("stub: down")
    delays = []
    for _ in range(9):
        await cache.refresh()
        delays.append(cache.next_delay())
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    source.result = GOOD
    assert await cache.refresh()
    assert cache.next_delay() == 30


async def test_backoff_respects_a_custom_initial_and_cap(source: StubSource) -> None:
    source.result = SourceError("stub: down")
    cache = make_cache(source, backoff_initial=0.5, backoff_cap=3)
    delays = []
    for _ in range(5):
        await cache.refresh()
        delays.append(cache.next_delay())
    assert delays == [0.5, 1, 2, 3, 3]


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 27.0), (0.5, 30.0), (0.75, 31.5)])
def test_jitter_is_a_fraction_of_the_interval(source: StubSource, rand: float, expected: float) -> None:
    cache = make_cache(source, rand=lambda: rand, interval=30, jitter=0.1)
    assert cache.next_delay() == pytest.approx(expected)


def test_jitter_stays_within_bounds(source: StubSource) -> None:
    rng = random.Random(1234)
    cache = make_cache(source, rand=rng.random, interval=30, jitter=0.2)
    delays = [cache.next_delay() for _ in range(2000)]
    assert all(24.0 <= d < 36.0 for d in delays)
    assert min(delays) < 25 and max(delays) > 35  # really jittered, both ways
    assert make_cache(source, rand=lambda: 0.999999, interval=30, jitter=0.2).next_delay() < 36.0


async def test_jitter_applies_to_backoff_too(source: StubSource) -> None:
    source.result = SourceError("stub: down")
    cache = make_cache(source, rand=lambda: 0.0, jitter=0.1, backoff_initial=4)
    await cache.refresh()
    assert cache.next_delay() == pytest.approx(3.6)


def test_next_delay_has_a_floor(source: StubSource) -> None:
    assert make_cache(source, rand=lambda: 0.0, interval=0.001).next_delay() == 0.05


# -- early refresh -----------------------------------------------------------------------------


async def test_early_refresh_is_rate_limited_per_interval(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock, early_refresh_interval=10)
    assert await cache.refresh()
    assert source.calls == 1

    await early_refresh_load(cache, source)
    assert source.calls == 2

    for offset in (0, 5, 9.999):
        clock.now = T0 + offset
        assert cache.request_early_refresh() is False
    await asyncio.sleep(0)
    assert source.calls == 2  # refused requests start nothing

    clock.now = T0 + 10
    await early_refresh_load(cache, source)
    assert source.calls == 3
    clock.now = T0 + 15
    assert cache.request_early_refresh() is False  # the window restarts at the last early refresh


async def test_early_refresh_joins_a_refresh_in_flight(source: StubSource) -> None:
    cache = make_cache(source)
    source.hold()
    regular = asyncio.ensure_future(cache.refresh())
    await wait_for_thread_entry(source)
    assert cache.request_early_refresh() is True
    await asyncio.sleep(0)
    source.release()
    assert await regular is True
    await asyncio.sleep(0)
    assert source.calls == 1
    assert cache.loads == 1


# -- readiness and status ----------------------------------------------------------------------


async def test_ready_until_max_staleness_past_the_last_good_load(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock, max_staleness=3600)
    assert not cache.is_ready(T0)
    assert await cache.refresh()
    source.result = SourceError("stub: down")
    clock.now = T0 + 3000
    assert not await cache.refresh()  # a failure does not make the keyring fresher
    assert cache.is_ready(T0 + 3600)
    assert not cache.is_ready(T0 + 3600.001)
    assert cache.age(T0 + 3700) == 3700


def test_status_before_any_load(source: StubSource, clock: FakeClock) -> None:
    assert make_cache(source, clock).status(T0) == {
        "loaded": False,
        "ready": False,
        "source": "stub:ring",
        "refreshing": False,
        "format": None,
        "signing_key": None,
        "age_seconds": None,
        "stale": False,
        "stale_since": None,
        "max_staleness_seconds": 3600.0,
        "consecutive_failures": 0,
        "last_error": None,
    }


async def test_status_after_a_load_and_a_failure(source: StubSource, clock: FakeClock) -> None:
    cache = make_cache(source, clock, interval=30, backoff_cap=60, max_staleness=3600)
    source.result = GOOD_2
    assert await cache.refresh()
    assert cache.status(T0 + 1.23456) == {
        "loaded": True,
        "ready": True,
        "source": "stub:ring",
        "refreshing": False,
        "format": "flat",
        "signing_key": "key-v2",
        "age_seconds": 1.235,
        "stale": False,
        "stale_since": None,
        "max_staleness_seconds": 3600.0,
        "consecutive_failures": 0,
        "last_error": None,
    }
    source.result = SourceError("stub: down")
    clock.now = T0 + 100
    assert not await cache.refresh()
    clock.now = T0 + 110
    assert not await cache.refresh()
    status = cache.status(T0 + 121)
    assert status["stale"] is True  # refreshes fail: serving the last good keyring
    assert status["stale_since"] == to_rfc3339(T0 + 100)  # since the first failure
    assert status["ready"] is True  # ... which is still younger than max_staleness
    assert status["consecutive_failures"] == 2
    assert status["last_error"] == "stub: down"
    assert cache.status(T0 + 3601)["ready"] is False
    source.result = GOOD_2
    assert await cache.refresh()
    assert cache.status(clock.now)["stale"] is False and cache.status(clock.now)["stale_since"] is None
    for value in cache.status(T0).values():
        assert SECRET_1 not in str(value) and SECRET_2 not in str(value)


async def test_a_cancelled_waiter_does_not_leave_a_finished_load_in_flight(source: StubSource) -> None:
    cache = make_cache(source)
    source.hold()
    waiter = asyncio.ensure_future(cache.refresh())
    await wait_for_thread_entry(source)
    waiter.cancel()  # the only caller goes away while the load is still running
    with pytest.raises(asyncio.CancelledError):
        await waiter
    source.release()
    for _ in range(500):  # the load itself still completes, off the event loop
        if cache.keyring is not None:
            break
        await asyncio.sleep(0.01)
    assert cache.keyring is not None and source.calls == 1
    source._gate = None
    assert await cache.refresh()
    assert source.calls == 2  # a new load, not the stale finished one


async def test_status_shows_a_refresh_in_flight(source: StubSource) -> None:
    cache = make_cache(source)
    source.hold()
    pending = asyncio.ensure_future(cache.refresh())
    await wait_for_thread_entry(source)
    assert cache.status(T0)["refreshing"] is True
    source.release()
    assert await pending
    assert cache.status(T0)["refreshing"] is False
