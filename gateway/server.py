"""Running the gateway: bind every listener, serve until SIGTERM/SIGINT, drain, exit.

Invariants:
- start-up fails (with one line and an exit code) before any listener binds if a keyring
  cannot be loaded; ``/readyz`` is 503 until every keyring has loaded;
- on SIGTERM the listeners stop accepting, ``/readyz`` turns 503, in-flight requests get
  ``shutdown_grace_seconds`` to finish, then the process exits 0;
- ``--workers N`` runs N processes sharing each port with SO_REUSEPORT (only then: a second
  gateway started by mistake on a taken port must fail, not split the traffic).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from aiohttp import web

from gateway import config as config_mod
from gateway import exitcodes
from gateway.clock import Clock, system_clock
from gateway.config import GatewayConfig
from gateway.echo import build_echo_app
from gateway.errors import ConfigError, RequestRejected
from gateway.observability import configure_logging
from gateway.proxy.app import build_listener_app, open_runtime
from gateway.replay_redis import RedisReplayStore

log = logging.getLogger("gateway.server")


@dataclass
class Bound:
    name: str
    host: str
    port: int


class StartupError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def run(
    config: GatewayConfig,
    stop: asyncio.Event,
    *,
    clock: Clock = system_clock,
    reuse_port: bool = False,
    on_ready: asyncio.Future[list[Bound]] | None = None,
) -> int:
    """Serve until ``stop`` is set. Raises StartupError if start-up fails."""
    async with open_runtime(config, clock=clock) as runtime:
        if isinstance(runtime.replay, RedisReplayStore):
            try:
                await runtime.replay.ping()
                policy = await runtime.replay.eviction_policy()
            except RequestRejected as exc:
                said = "does not answer" if exc.detail == "replay store unreachable" else exc.detail
                raise StartupError(exitcodes.REPLAY_STORE_ERROR, f"the Redis replay store {said}") from None
            if policy != "noeviction":
                # Any eviction policy may drop live replay keys under memory pressure, and a
                # dropped key is a replay that passes.
                raise StartupError(
                    exitcodes.REPLAY_STORE_ERROR,
                    f"the Redis replay store uses maxmemory-policy {policy}; it must be noeviction "
                    "(an evicted key would let a replay through)",
                )
        failed = await runtime.load_keyrings()
        for name, error in failed.items():
            if not config.keyrings[name].start_degraded:
                raise StartupError(exitcodes.KEYRING_ERROR, f"keyring {name!r} could not be loaded: {error}")
            # Asked to start anyway: its routes answer 503 and /readyz stays 503 until it loads.
            log.warning("starting degraded", extra={"keyring": name, "error": error})
        runners: list[web.AppRunner] = []
        bound: list[Bound] = []
        apps: list[tuple[str, str, int, web.Application]] = [
            (lc.name, lc.host, lc.port, build_listener_app(runtime, lc)) for lc in config.listeners.values()
        ]
        if config.echo is not None:
            apps.append(("echo", config.echo.host, config.echo.port, build_echo_app()))
        try:
            for name, host, port, app in apps:
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace)
                await runner.setup()
                runners.append(runner)
                site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
                try:
                    await site.start()
                except OSError as exc:
                    raise StartupError(
                        exitcodes.BIND_ERROR, f"listener {name!r} cannot bind {host}:{port}: {exc.strerror}"
                    ) from None
                for sock_addr in runner.addresses:
                    bound.append(Bound(name, str(sock_addr[0]), int(sock_addr[1])))
            # Everything loaded so far (modules, config, keyrings, boto3's data) lives as long as
            # the process: keep it out of the collector's full passes, which otherwise walk it
            # all (~20 ms a pass) every so often under load.
            gc.collect()
            gc.freeze()
            log.info("gateway ready", extra={"listeners": [f"{b.name}={b.host}:{b.port}" for b in bound]})
            if on_ready is not None:
                on_ready.set_result(bound)
            await stop.wait()
            runtime.draining = True
            log.info("draining", extra={"grace_seconds": config.shutdown_grace})
        finally:
            # Stops accepting, lets in-flight handlers finish within shutdown_timeout, then closes.
            await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
            gc.unfreeze()  # for callers that go on in this process (tests)
    log.info("stopped")
    return exitcodes.OK


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _serve_in_process(config: GatewayConfig, reuse_port: bool) -> int:
    stop = asyncio.Event()
    _install_stop_signals(stop)
    return await run(config, stop, reuse_port=reuse_port)


def serve_process(config_path: str, reuse_port: bool) -> int:
    """One gateway process (the only one, or one worker). Returns an exit code."""
    try:
        config = config_mod.load(Path(config_path))
    except ConfigError as exc:  # the same lines as every command's (a worker has no CLI wrapper)
        code, lines = exitcodes.describe(exc)
        print("\n".join(lines), file=sys.stderr)
        return code
    configure_logging(config.log_level)
    try:
        return asyncio.run(_serve_in_process(config, reuse_port))
    except StartupError as exc:
        print(f"hmac-gateway: {exc}", file=sys.stderr)
        return exc.code


def _worker(config_path: str) -> None:
    sys.exit(serve_process(config_path, reuse_port=True))


def serve_workers(config_path: str, workers: int) -> int:
    """Run ``workers`` processes on the same ports; forward SIGTERM/SIGINT; exit when all do."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(config_path,), name=f"hmac-gateway-{i}") for i in range(workers)]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: each worker drains on its own

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.start()
    code = exitcodes.OK
    remaining = list(procs)
    while remaining:
        for proc in list(remaining):
            proc.join(timeout=0.2)
            if proc.exitcode is None:
                continue
            remaining.remove(proc)
            # A worker still starting up when we forwarded SIGTERM dies of the signal itself:
            # that is the stop we asked for, not a failure.
            stopped_by_us = stopping and proc.exitcode == -signal.SIGTERM
            if proc.exitcode != 0 and not stopped_by_us and code == exitcodes.OK:
                code = proc.exitcode if proc.exitcode > 0 else exitcodes.FAILURE
                forward(signal.SIGTERM, None)  # one worker failed: stop the rest
    return code
