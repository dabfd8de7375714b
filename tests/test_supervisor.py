"""``serve --workers N`` supervision (gateway/supervisor.py): a dead worker is replaced, a crash
loop or a start-up failure stops the gateway, SIGTERM drains every worker; and the metrics of
every worker add up in one /metrics. Real processes, real signals, real ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway import exitcodes
from gateway.supervisor import Supervisor, metrics_directory
from tests.spawn_targets import worker_exiting_with
from tests.support import Proc, free_port, get_json, loop_config, wait_ready


def _supervise(tmp_path: Path, code: int, **kw: float) -> tuple[int, Supervisor]:
    marker = tmp_path / "worker.cfg"
    marker.write_text(str(code))
    supervisor = Supervisor(worker_exiting_with, str(marker), 2, **kw)  # type: ignore[arg-type]
    with metrics_directory() as metrics_dir:
        return supervisor.run(metrics_dir), supervisor


def test_a_worker_that_fails_its_start_up_stops_the_gateway_without_restarts(tmp_path: Path) -> None:
    code, supervisor = _supervise(tmp_path, exitcodes.KEYRING_ERROR)
    assert code == exitcodes.KEYRING_ERROR
    assert supervisor.restarts == 0  # a restart cannot fix a start-up failure
    assert "r" not in (tmp_path / "worker.starts").read_text()


def test_workers_that_keep_dying_stop_the_gateway(tmp_path: Path) -> None:
    code, supervisor = _supervise(tmp_path, 1, crash_limit=4, crash_window=60, backoff_initial=0.01)
    assert code == exitcodes.FAILURE
    # each death up to the limit is replaced; the 5th (> 4 within the window) stops the gateway
    assert supervisor.restarts == 4
    assert supervisor.procs == []


def _refused(text: str) -> list[float]:
    series = re.findall(r"^(hmac_gateway_requests_total\{[^}]*\}) (\S+)$", text, re.M)
    return [float(value) for name, value in series if 'reason="missing_signature"' in name]


async def _scrape_until(port: int, done: Callable[[str], bool], within: float = 10) -> str:
    """Scrape /metrics until ``done(text)``: the workers flush on their own schedule."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}) as r:
                assert r.status == 200
                text = await r.text()
            if done(text) or loop.time() > deadline:
                assert done(text), text[:3000]
                return text
            await asyncio.sleep(0.1)


async def test_a_killed_worker_is_replaced_and_counted_and_metrics_cover_every_worker(tmp_path: Path) -> None:
    sign, verify = free_port(), free_port()
    cfg = loop_config(tmp_path, sign, verify, 0)
    text = cfg.read_text().replace("[echo]\nport = 0\n", "")
    text = text.replace('upstream = "http://127.0.0.1:0"', f'upstream = "http://127.0.0.1:{sign}"')
    cfg.write_text(text + "replay_protection = false\n")
    proc = Proc("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path)
    try:
        await wait_ready(sign, proc)
        pids: set[int] = set()
        async with aiohttp.ClientSession() as session:
            # new connections: SO_REUSEPORT spreads them over both workers, once the second one is
            # up (bounded: a loaded machine may start it seconds after the first)
            deadline = asyncio.get_running_loop().time() + 30
            while len(pids) < 2 and asyncio.get_running_loop().time() < deadline:
                async with session.get(f"http://127.0.0.1:{sign}/healthz", headers={"Connection": "close"}) as r:
                    pids.add((await r.json())["pid"])
            assert len(pids) == 2
            for _ in range(40):
                async with session.get(f"http://127.0.0.1:{verify}/nothing", headers={"Connection": "close"}) as r:
                    assert r.status == 401
        # one series, every worker's requests: 40 refusals, whichever worker answers the scrape
        # (each worker moves its counts into the shared files every second)
        await _scrape_until(sign, lambda text: _refused(text) == [40.0])

        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)  # what the OOM killer does
        deadline = asyncio.get_running_loop().time() + 20
        replaced: set[int] = set()
        while asyncio.get_running_loop().time() < deadline and not (replaced - pids):
            try:
                _, doc = await get_json(f"http://127.0.0.1:{sign}/healthz")
                replaced.add(doc["pid"])
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        assert replaced - pids, "no new worker took over"
        assert proc.popen.poll() is None  # the gateway stayed up
        restarts = re.compile(r"^hmac_gateway_worker_restarts_total 1\.0$", re.M)
        await _scrape_until(sign, lambda text: restarts.search(text) is not None)
        assert '"msg":"worker died; starting another"' in proc.stderr
    finally:
        proc.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait) == 0
