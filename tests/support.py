"""What the test modules share: free ports, raw and aiohttp clients, gateway processes, private
redis-servers, and the other library's view of a signed request. Test modules import from here
(and from ``tests.helpers`` and the ``conftest`` fixtures), never from one another."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis
from aiohttp import web
from multidict import CIMultiDict

from gateway import config as config_mod
from gateway.echo import build_echo_app
from gateway.observability import ParserRefusalFilter
from gateway.server import Bound, run
from tests.helpers import REQUIRED, lib_message, lib_signer, lib_verifier, random_secret

if TYPE_CHECKING:
    from tests.conftest import Gateway

# -- waiting ----------------------------------------------------------------------------------


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds: for things that happen on another connection or task
    (a FIN reaching us, a background refresh), never for a time window (use the fake clock)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


# -- ports and raw HTTP ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def raw_http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


# -- gateway processes ------------------------------------------------------------------------


def write_config(tmp: Path, body: str) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(body)
    return path


def loop_config(tmp: Path, sign: int, verify: int, echo: int, create: bool = True) -> Path:
    return write_config(
        tmp,
        f"""
[gateway]
shutdown_grace_seconds = 5
[keyrings.demo]
path = "keyrings/demo.json"
create = {str(create).lower()}
[listeners.sign]
port = {sign}
[listeners.verify]
port = {verify}
[echo]
port = {echo}
[[routes]]
name = "out"
listener = "sign"
mode = "sign"
upstream = "http://127.0.0.1:{verify}"
keyring = "demo"
[[routes]]
name = "in"
listener = "verify"
mode = "verify"
upstream = "http://127.0.0.1:{echo}"
keyring = "demo"
""",
    )


class Proc:
    def __init__(self, *args: str, cwd: Path) -> None:
        self.stderr_path = cwd / f"stderr-{time.monotonic_ns()}.log"
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=self._err
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            self._err.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # only our own child, by its pid
            self.popen.wait(10)
        self._err.close()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_ready(port: int, proc: Proc, deadline: float = 20) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.popen.poll() is None, proc.stderr
        try:
            if (await get_json(f"http://127.0.0.1:{port}/readyz"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"not ready in {deadline}s: {proc.stderr}")


# -- a gateway in a thread ---------------------------------------------------------------------


class ErrorRecords(logging.Handler):
    """Collects ERROR records (tracebacks included) from the gateway's and aiohttp's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class LiveGateway:
    ports: dict[str, int]
    errors: ErrorRecords


@contextlib.contextmanager
def live_gateway(make_raw: Callable[[str], dict[str, Any]], base_dir: Path) -> Iterator[LiveGateway]:
    """``gateway.server.run`` (what ``serve`` runs) on its own event loop in a thread, with the
    echo app as its upstream: for tests that talk raw sockets to it from synchronous code.
    ``make_raw(upstream_url)`` returns the config dict."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready: asyncio.Future[list[Bound]] = loop.create_future()
    errors = ErrorRecords()
    refusals = ParserRefusalFilter()  # what serve installs on aiohttp's server log
    logging.getLogger("gateway").addHandler(errors)
    logging.getLogger("aiohttp.server").addFilter(refusals)
    logging.getLogger("aiohttp.server").addHandler(errors)

    async def main() -> None:
        echo = web.AppRunner(build_echo_app())
        await echo.setup()
        await web.TCPSite(echo, "127.0.0.1", 0).start()
        try:
            raw = make_raw(f"http://127.0.0.1:{echo.addresses[0][1]}")
            await run(config_mod.parse(raw, base_dir=base_dir), stop, on_ready=ready)
        finally:
            await echo.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        bound = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(ready), 10), loop).result()
        yield LiveGateway({b.name: b.port for b in bound}, errors)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        logging.getLogger("gateway").removeHandler(errors)
        logging.getLogger("aiohttp.server").removeHandler(errors)
        logging.getLogger("aiohttp.server").removeFilter(refusals)


def exchange(port: int, request: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
    """One request on a new connection; the whole reply (the caller sends Connection: close;
    a reply that ends without EOF is returned once ``timeout`` passes with nothing more)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                if not chunks:  # a client that asked for keep-alive got its answer, but no EOF
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# -- aiohttp client and the other library ---------------------------------------------------


def lib_verify_received(gw: Gateway, received: Any, require: tuple[str, ...] = REQUIRED) -> Any:
    """Verify what the upstream received, as the backend would, with the other library."""
    url = f"http://{received.headers['Host']}{received.raw_path}"
    keys = {k: v.encode() for k, v in gw.keys.items()}
    return lib_verifier(keys).verify(
        lib_message(received.method, url, received.headers), require_components=list(require), body=received.body
    )


def lib_signed_headers(
    gw: Gateway,
    key_id: str,
    *,
    method: str = "POST",
    path: str = "/hooks/pay?id=7",
    body: bytes = b'{"amount": 42}',
    created: float | None = None,
    nonce: str | None = "auto",
    extra: dict[str, str] | None = None,
) -> CIMultiDict[str]:
    """Headers a webhook sender using http-message-signatures would send to the verify listener."""
    url = str(gw.url("verify", path))
    headers: CIMultiDict[str] = CIMultiDict(
        {"Host": f"127.0.0.1:{gw.port('verify')}", "Content-Type": "application/json"}
    )
    headers.update(extra or {})
    when = datetime.datetime.fromtimestamp(created, tz=datetime.UTC) if created is not None else None
    lib_signer({k: v.encode() for k, v in gw.keys.items()}).sign(
        lib_message(method, url, headers),
        key_id=key_id,
        created=when,
        nonce=random_secret()[:24] if nonce == "auto" else nonce,
        covered_component_ids=REQUIRED,
        body=body,
        label="cb",
    )
    del headers["Host"]
    return headers


async def post(url: Any, method: str = "POST", **kw: Any) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kw) as resp:
        text = await resp.text()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {"_text": text}
        return resp.status, doc, CIMultiDict(resp.headers)


# -- Redis ------------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def private_redis(tmp_path: Path, *settings: str) -> Iterator[str]:
    """A redis-server of our own on a free loopback port with ``settings``; stopped by its pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            *settings,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
                break
            except (redis.AuthenticationError, redis.ResponseError):  # it answers, if only to ask for a password
                break
            except redis.RedisError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def workers_config(tmp_path: Path, prefix: str, redis_url: str = REDIS_URL, upstream: str = "") -> tuple[Path, int]:
    sign, verify = free_port(), free_port()
    cfg = loop_config(tmp_path, sign, verify, 0)
    text = cfg.read_text().replace("[echo]\nport = 0\n", "")
    text = text.replace('upstream = "http://127.0.0.1:0"', f'upstream = "{upstream or "http://127.0.0.1:9"}"')
    text = text.replace(
        "[gateway]\n", f'[gateway]\nreplay_store = "redis"\nredis_url = "{redis_url}"\nredis_key_prefix = "{prefix}"\n'
    )
    cfg.write_text(text)
    return cfg, verify
