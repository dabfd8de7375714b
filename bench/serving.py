"""Serving helpers shared by the benchmark's own servers (upstream, baseline proxy).

The event loop is chosen explicitly so the baseline can run on the same loop as the gateway
(the gateway's ``serve`` uses ``asyncio.run`` with the default policy, i.e. the stock loop).
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
from collections.abc import Callable

from aiohttp import web

LOOPS = ("asyncio", "uvloop", "auto")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """``asyncio`` (stock), ``uvloop`` (must be installed) or ``auto`` (uvloop if installed)."""
    if kind not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


async def serve_until_signal(app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then clean up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, *, loop: str, reuse_port: bool = False) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(serve_until_signal(app, host, port, reuse_port=reuse_port))


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies, so no benchmark server outlives the harness.

    Used as ``preexec_fn``; a no-op where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
