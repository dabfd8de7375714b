"""``hmac-gateway serve`` as an operator runs it: a real process, real signals, real ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers import random_secret
from tests.support import Proc, free_port, get_json, live_gateway, loop_config, run_cli, wait_ready, write_config


async def test_demo_loop_runs_on_a_fresh_install(tmp_path: Path, procs: list[Proc]) -> None:
    sign, verify, echo = free_port(), free_port(), free_port()
    proc = Proc("--config", str(loop_config(tmp_path, sign, verify, echo)), "serve", cwd=tmp_path)
    procs.append(proc)
    await wait_ready(sign, proc)
    keyring = tmp_path / "keyrings" / "demo.json"
    assert oct(keyring.stat().st_mode & 0o777) == "0o600"  # created on first start, private
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{sign}/orders?id=1", data=b'{"hi": 1}', headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 200
            echoed = await resp.json()
        async with session.post(f"http://127.0.0.1:{verify}/orders", data=b"unsigned") as resp:
            assert resp.status == 401
            assert (await resp.json(content_type=None))["reason"] == "missing_signature"
    headers = dict(echoed["headers"])
    secret = json.loads(keyring.read_text())["keys"][0]["secret"]
    assert headers["X-Gateway-Key-Id"] == json.loads(keyring.read_text())["keys"][0]["id"]
    assert echoed["body"] == '{"hi": 1}'
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 0  # an orderly stop flushes the last access-log lines
    assert secret not in proc.stderr  # logs never carry key material
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["msg"] == "request"]
    assert {r["listener"] for r in requests} >= {"sign", "verify"}
    assert len({r["request_id"] for r in requests if r["path"] == "/orders"}) >= 2
    # the same request id crossed both hops
    ids = [r["request_id"] for r in requests if r["listener"] == "sign" and r["path"] == "/orders"]
    assert any(r["request_id"] == ids[0] for r in requests if r["listener"] == "verify")


async def test_sigterm_drains_in_flight_requests_then_exits_0(
    tmp_path: Path, procs: list[Proc], aiohttp_server: Any
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()  # answered only once the gateway has stopped accepting
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    upstream: TestServer = await aiohttp_server(app, host="127.0.0.1")
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps({"k1": random_secret()}))
    os.chmod(ring, 0o600)
    port = free_port()
    cfg = write_config(
        tmp_path,
        f"""
[gateway]
shutdown_grace_seconds = 5
[keyrings.r]
path = "ring.json"
[listeners.sign]
port = {port}
[[routes]]
name = "out"
listener = "sign"
mode = "sign"
upstream = "http://127.0.0.1:{upstream.port}"
keyring = "r"
""",
    )
    proc = Proc("--config", str(cfg), "serve", cwd=tmp_path)
    procs.append(proc)
    await wait_ready(port, proc)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(session.post(f"http://127.0.0.1:{port}/work", data=b"x"))
        await asyncio.wait_for(arrived.wait(), 10)
        proc.popen.send_signal(signal.SIGTERM)
        await asyncio.wait_for(_until_refused(port), 10)  # no longer accepting, while the request is in flight
        release.set()
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.status == 200
        assert await resp.text() == "finished"
    assert await asyncio.to_thread(proc.wait) == 0
    assert '"msg":"draining"' in proc.stderr


async def _until_refused(port: int) -> None:
    """Returns once connections to ``port`` are refused (the caller bounds it with a timeout)."""
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.02)


async def test_workers_share_the_port(tmp_path: Path, procs: list[Proc]) -> None:
    sign, verify, _ = free_port(), free_port(), free_port()
    cfg = loop_config(tmp_path, sign, verify, 0)
    text = cfg.read_text().replace("[echo]\nport = 0\n", "")
    text = text.replace('upstream = "http://127.0.0.1:0"', f'upstream = "http://127.0.0.1:{sign}"')
    cfg.write_text(text)
    refused = run_cli("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path)
    assert refused.returncode == 2 and "replay could pass once per worker" in refused.stderr
    cfg.write_text(text + "replay_protection = false\n")  # appended to the last route: the verify one
    proc = Proc("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path)
    procs.append(proc)
    await wait_ready(sign, proc)
    pids = set()
    deadline = time.monotonic() + 30  # the second worker may still be starting: bounded wait
    while len(pids) < 2 and time.monotonic() < deadline:
        status, doc = await get_json(f"http://127.0.0.1:{sign}/healthz")
        assert status == 200
        pids.add(doc["pid"])
    assert len(pids) == 2, "both workers should accept connections on the shared port"
    assert proc.popen.pid not in pids  # the parent only supervises
    proc.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait) == 0


def test_second_gateway_on_a_taken_port_fails_with_exit_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = loop_config(tmp_path, port, free_port(), free_port())
        result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "cannot bind" in result.stderr and "Traceback" not in result.stderr


def test_unloadable_keyring_stops_the_start_with_exit_3(tmp_path: Path) -> None:
    cfg = loop_config(tmp_path, free_port(), free_port(), free_port(), create=False)
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1].startswith("hmac-gateway: keyring 'demo' could not be loaded")
    (tmp_path / "keyrings").mkdir()
    short = tmp_path / "keyrings" / "demo.json"
    short.write_text(json.dumps({"k1": "too-short-secret"}))
    os.chmod(short, 0o600)
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 3
    assert "'k1'" in result.stderr and "too-short-secret" not in result.stderr
    cfg.write_text(
        cfg.read_text().split("[echo]")[0]
        + "[[routes]]"
        + cfg.read_text().split("[[routes]]", 1)[1]
        + "replay_protection = false\n"
    )
    result = run_cli("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 3, result.stderr  # checked once, before any worker starts
    assert "'k1'" in result.stderr and "Traceback" not in result.stderr


def test_public_sign_listener_is_refused_with_exit_2(tmp_path: Path) -> None:
    cfg = loop_config(tmp_path, free_port(), free_port(), free_port())
    cfg.write_text(cfg.read_text().replace("[listeners.sign]\n", '[listeners.sign]\nhost = "0.0.0.0"\n'))
    result = run_cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "signing oracle" in result.stderr and "Traceback" not in result.stderr


def test_keys_lists_states_and_never_secrets(tmp_path: Path) -> None:
    secrets = {"key-v1": random_secret(), "key-v2": random_secret()}
    cfg = loop_config(tmp_path, free_port(), free_port(), free_port(), create=False)
    (tmp_path / "keyrings").mkdir()
    ring = tmp_path / "keyrings" / "demo.json"
    ring.write_text(json.dumps(secrets))
    os.chmod(ring, 0o600)
    text = run_cli("--config", str(cfg), "keys", cwd=tmp_path)
    assert text.returncode == 0
    assert "signing with key-v2" in text.stdout and "key-v1" in text.stdout
    as_json = run_cli("--config", str(cfg), "keys", "--json", cwd=tmp_path)
    doc = json.loads(as_json.stdout)
    assert doc["schema"] == 1
    assert [k["id"] for k in doc["keyrings"]["demo"]["keys"]] == ["key-v1", "key-v2"]
    for out in (text, as_json):
        for secret in secrets.values():
            assert secret not in out.stdout + out.stderr


def test_slow_loris_connections_are_closed_after_the_header_timeout(tmp_path: Path) -> None:
    """Issue 9: 1,800 connections trickling header bytes were all held. aiohttp's keep-alive timer
    is our header read deadline (header_timeout_seconds); its default kept them an hour."""
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps({"k1": random_secret()}))
    os.chmod(ring, 0o600)

    def raw(upstream: str) -> dict[str, Any]:
        return {
            "gateway": {"header_timeout_seconds": 0.5},
            "keyrings": {"r": {"path": str(ring)}},
            "listeners": {"sign": {"port": 0}},
            "routes": [{"name": "out", "listener": "sign", "mode": "sign", "upstream": upstream, "keyring": "r"}],
        }

    with live_gateway(raw, tmp_path) as gw:
        port = gw.ports["sign"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            started = time.monotonic()
            closed_after = None
            for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"z" * 100:  # ~10 s if never cut off
                try:
                    slow.sendall(bytes([byte]))
                    time.sleep(0.1)
                    slow.setblocking(False)
                    try:
                        if slow.recv(1) == b"":
                            closed_after = time.monotonic() - started
                            break
                    except BlockingIOError:
                        pass
                    finally:
                        slow.setblocking(True)
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None and closed_after < 3, closed_after
        # a whole request in time is served, and its idle keep-alive connection then closes too
        with socket.create_connection(("127.0.0.1", port), timeout=5) as ok:
            ok.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert ok.recv(12) == b"HTTP/1.1 200"
            started = time.monotonic()
            while ok.recv(65536):
                assert time.monotonic() - started < 3
        assert gw.errors.records == []
