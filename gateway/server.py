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
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway import config as config_mod
from gateway import exitcodes, metrics, supervisor
from gateway.clock import Clock, system_clock
from gateway.config import GatewayConfig
from gateway.echo import build_echo_app
from gateway.errors import ConfigError, ReplayStoreError
from gateway.observability import configure_logging
from gateway.proxy.app import build_listener_app
from gateway.proxy.runtime import open_runtime

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
        try:
            for warning in await runtime.replay.check():
                log.warning("replay store", extra={"warning": warning})
        except ReplayStoreError as exc:
            raise StartupError(exitcodes.REPLAY_STORE_ERROR, str(exc)) from None
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
                runner = web.AppRunner(
                    app,
                    access_log=None,
                    shutdown_timeout=config.shutdown_grace,
                    # aiohttp closes a connection whose next request head has not arrived when its
                    # keep-alive timer fires (armed at connect and after each answer): that is our
                    # header read deadline. Its default, 3630 s, let slow-loris clients stay an hour.
                    keepalive_timeout=config.header_timeout,
                )
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


def _worker(config_path: str, restarted: bool) -> None:
    if restarted:
        metrics.WORKER_RESTARTS.inc()
    sys.exit(serve_process(config_path, reuse_port=True))


def serve_workers(config_path: str, workers: int) -> int:
    """``workers`` processes on the same ports, supervised (see ``gateway.supervisor``)."""
    configure_logging(config_mod.load(Path(config_path)).log_level)  # validated by the caller
    return supervisor.serve_workers(_worker, config_path, workers)
