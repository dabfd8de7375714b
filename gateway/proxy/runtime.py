"""The runtime every listener shares, and the resources it opens.

Several listeners (a sign listener, a verify listener, ...) share one keyring cache per
keyring, one replay store and one pooled client per upstream, so those resources live in a
``Runtime`` that outlives the per-listener ``web.Application``s. Each resource is opened by
its own async context manager (code before ``yield`` starts it, code after cleans up),
stacked by ``open_runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway import metrics
from gateway.clock import Clock, system_clock
from gateway.config import GatewayConfig
from gateway.keys.cache import KeyringCache
from gateway.keys.factory import make_cache
from gateway.observability import AccessLog, RequestIds
from gateway.proxy.forward import Upstream
from gateway.replay import ReplayStore
from gateway.replay.factory import open_replay_store
from gateway.replay.memory import MemoryReplayStore


@dataclass
class Runtime:
    config: GatewayConfig
    clock: Clock
    caches: dict[str, KeyringCache] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    replay: ReplayStore = field(default_factory=MemoryReplayStore)
    access_log: AccessLog = field(default_factory=AccessLog)
    request_ids: RequestIds = field(default_factory=RequestIds)
    recorder: metrics.Recorder = field(default_factory=metrics.Recorder)
    expiry_series: dict[str, set[str]] = field(default_factory=dict)  # key ids with an expiry gauge
    draining: bool = False

    async def load_keyrings(self) -> dict[str, str]:
        """Initial load of every keyring; returns {name: error} for those that failed."""
        results = await asyncio.gather(*(c.refresh() for c in self.caches.values()))
        return {
            name: cache.last_error or "failed"
            for (name, cache), ok in zip(self.caches.items(), results, strict=True)
            if not ok
        }

    def ready(self) -> bool:
        now = self.clock()
        return not self.draining and all(c.is_ready(now) for c in self.caches.values())

    def keyring_status(self) -> dict[str, object]:
        now = self.clock()
        return {name: cache.status(now) for name, cache in self.caches.items()}


@contextlib.asynccontextmanager
async def keyring_caches(runtime: Runtime, refresh: bool) -> AsyncIterator[None]:
    for name, kc in runtime.config.keyrings.items():
        runtime.caches[name] = make_cache(kc.settings, runtime.clock)
    tasks = [asyncio.ensure_future(c.run()) for c in runtime.caches.values()] if refresh else []
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def upstream_pools(runtime: Runtime) -> AsyncIterator[None]:
    for route in runtime.config.routes:
        upstream = Upstream(
            route.upstream,
            connect_timeout=route.connect_timeout,
            read_timeout=route.upstream_timeout,
            observe_latency=functools.partial(runtime.recorder.observe, metrics.UPSTREAM_SECONDS, (route.name,)),
            tls=route.upstream_tls,
        )
        await upstream.start()
        runtime.upstreams[route.name] = upstream
    try:
        yield
    finally:
        await asyncio.gather(*(u.close() for u in runtime.upstreams.values()))


@contextlib.asynccontextmanager
async def replay_store(runtime: Runtime) -> AsyncIterator[None]:
    runtime.replay = open_replay_store(runtime.config.replay, runtime.clock)
    try:
        yield
    finally:
        await runtime.replay.close()


def _state_gauges(runtime: Runtime) -> None:
    """Gauges that are a function of state, set at every flush."""
    now = runtime.clock()
    for name, cache in runtime.caches.items():
        age = cache.age(now)
        metrics.KEYRING_AGE.labels(name).set(-1 if age is None else age)
        metrics.KEYRING_STALE.labels(name).set(1 if cache.failing_since is not None and cache.keyring else 0)
        metrics.KEYRING_REFRESH_FAILURES.labels(name).set(cache.failures)
        keyring = cache.keyring
        if keyring is None:
            continue
        signing = keyring.signing_key
        since = signing.promoted_at or signing.created_at
        metrics.SIGNING_KEY_AGE.labels(name).set(-1 if since is None else now - since)
        expiring = {key.id: key.expires_at for key in keyring.keys if key.expires_at is not None}
        for key_id, expires_at in expiring.items():
            metrics.KEY_EXPIRY.labels(name, key_id).set(expires_at - now)
        for gone in runtime.expiry_series.get(name, set()) - set(expiring):
            metrics.KEY_EXPIRY.remove(name, gone)  # a removed key leaves no series behind
        runtime.expiry_series[name] = set(expiring)
    size = runtime.replay.size()
    if size is not None:
        metrics.REPLAY_ENTRIES.set(size)


@contextlib.asynccontextmanager
async def metrics_flusher(runtime: Runtime, interval: float = 1.0) -> AsyncIterator[None]:
    """Moves this process's counts into prometheus-client every ``interval`` seconds (under
    ``--workers`` the scrape may reach another worker, which reads our files)."""
    runtime.recorder.gauges.append(functools.partial(_state_gauges, runtime))

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            runtime.recorder.flush()

    task = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runtime.recorder.flush()


@contextlib.asynccontextmanager
async def open_runtime(
    config: GatewayConfig, *, clock: Clock = system_clock, refresh: bool = True
) -> AsyncIterator[Runtime]:
    """Open every shared resource. ``refresh=False`` leaves refreshing to the caller (tests)."""
    runtime = Runtime(config=config, clock=clock)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(replay_store(runtime))
        await stack.enter_async_context(keyring_caches(runtime, refresh))
        await stack.enter_async_context(upstream_pools(runtime))
        await stack.enter_async_context(metrics_flusher(runtime))
        stack.callback(runtime.access_log.close)  # the last lines, before the process exits
        yield runtime
