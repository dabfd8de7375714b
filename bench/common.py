"""Shared machinery of the benchmarks: processes, /proc readings, requests, load generators.

Everything here is bounded: every server is started by us, known by PID and stopped by PID
(and gets SIGTERM if the harness dies); every load run stops by itself after a fixed time
(wrk ``-d``) or a fixed count with a deadline (the Python generators).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from bench import serving
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Key
from gateway.signing import rfc9421
from gateway.signing.digest import content_digest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WRK_SCRIPT = BENCH / "wrk_pool.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

PATH = "/bench/items"
QUERY = "id=42&q=bench"
CONTENT_TYPE = "application/octet-stream"
CLIENT_TAG = "bench-client"


# -- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    name: str
    method: str
    size: int

    @property
    def body(self) -> bytes:
        return b"a" * self.size  # wrk_pool.lua builds the same bytes


PAYLOADS = (
    Payload("GET", "GET", 0),
    Payload("POST 1 KiB", "POST", 1024),
    Payload("POST 256 KiB", "POST", 256 * 1024),
)


def request_head(payload: Payload, authority: str, extra: Iterable[tuple[str, str]] = ()) -> str:
    """One request head for wrk_pool.lua: header lines joined by TAB, no final blank line."""
    lines = [f"{payload.method} {PATH}?{QUERY} HTTP/1.1", f"Host: {authority}"]
    if payload.method != "GET":
        lines += [f"Content-Type: {CONTENT_TYPE}", f"Content-Length: {payload.size}"]
    lines += [f"{name}: {value}" for name, value in extra]
    return "\t".join(lines)


class Signer:
    """The verify route's client: signs like a real sender, with the gateway's keyring file."""

    def __init__(self, keyring_path: Path, keyring_name: str = "bench") -> None:
        self.key: Key = parse_keyring(keyring_name, keyring_path.read_bytes()).signing_key
        self.components = rfc9421.parse_components(rfc9421.DEFAULT_COMPONENTS)
        self.with_type = (*self.components, rfc9421.Component.parse("content-type"))
        self._digests: dict[int, str] = {}

    def signature_headers(self, payload: Payload, authority: str, created: int | None = None) -> list[tuple[str, str]]:
        """Content-Digest, Signature-Input and Signature for one request, with a fresh nonce."""
        digest = self._digests.get(payload.size)
        if digest is None:
            digest = self._digests[payload.size] = content_digest(payload.body)
        headers: CIMultiDict[str] = CIMultiDict({"Content-Digest": digest})
        if payload.method != "GET":
            headers["Content-Type"] = CONTENT_TYPE
        view = rfc9421.RequestView(method=payload.method, authority=authority, path=PATH, query=QUERY, headers=headers)
        signed = rfc9421.sign(
            view,
            self.key,
            self.with_type if payload.method != "GET" else self.components,
            created=int(time.time()) if created is None else created,
            nonce=secrets.token_urlsafe(16),
            tag=CLIENT_TAG,
        )
        return [
            ("Content-Digest", digest),
            ("Signature-Input", signed.signature_input),
            ("Signature", signed.signature),
        ]


def write_pool(prefix: Path, heads_per_thread: Sequence[Sequence[str]]) -> None:
    for index, heads in enumerate(heads_per_thread):
        Path(f"{prefix}.{index}").write_text("\n".join(heads) + "\n", encoding="ascii")


# -- processes and /proc ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the --workers N children of a serve parent)."""
    children = _ppid_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes, from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user+nice+system+irq+softirq+steal), /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def source_fingerprint(root: Path = REPO / "gateway") -> str:
    """sha256 over the gateway's sources: shows whether they changed during a run."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (proc(5): writing 5 to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (one per SO_REUSEPORT worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except OSError:
            continue
    return count


class Service:
    """A server process we started: known by PID, stopped by PID."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **(env or {})},
                preexec_fn=serving.die_with_parent,
            )
        self.pid = self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{self.name} exited with {code}; log {self.log_path}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        tree = self.pids()
        self.proc.send_signal(signal.SIGTERM)  # serve parents forward it to their workers
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_ready(service: Service, port: int, sockets: int, url: str, timeout: float = 30.0) -> None:
    """Until ``sockets`` listeners are bound on ``port`` and ``url`` answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        service.check_alive()
        if listening_sockets(port) >= sockets:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{service.name} not ready on port {port} after {timeout:.0f}s (log: {service.log_path})"
            )
        time.sleep(0.1)


# -- the stack under test --------------------------------------------------------------------


def gateway_command() -> list[str]:
    """The real CLI from the venv running this harness (falls back to ``python -m gateway``)."""
    cli = Path(sys.executable).parent / "hmac-gateway"
    if cli.exists():
        return [str(cli)]
    found = shutil.which("hmac-gateway")
    return [found] if found else [sys.executable, "-m", "gateway"]


@dataclass
class Target:
    """One thing to load: a proxy (or a gateway route) at one worker count."""

    kind: str  # baseline | sign | verify
    workers: int
    port: int
    service: Service
    upstream: Service | None = None
    store: Service | None = None  # the Redis replay store, when the gateway uses one

    @property
    def replay_store(self) -> str:
        return "redis" if self.store else ("memory" if self.kind == "verify" else "")

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.workers}w"


def gateway_toml(
    keyring: Path,
    sign_port: int,
    verify_port: int,
    upstream: str,
    *,
    log_level: str,
    replay_protection: bool,
    max_body_bytes: int = 1024 * 1024,
    redis_url: str | None = None,
) -> str:
    store = f'replay_store = "redis"\nredis_url = "{redis_url}"\n' if redis_url else ""
    return f"""# generated by bench/: a sign route and a verify route to the benchmark upstream
[gateway]
log_level = "{log_level}"
shutdown_grace_seconds = 2
replay_max_entries = 50000000  # the runs remember millions of nonces within the 300 s window
{store}
[keyrings.bench]
source = "file"
path = "{keyring}"

[listeners.sign]
host = "127.0.0.1"
port = {sign_port}

[listeners.verify]
host = "127.0.0.1"
port = {verify_port}

[[routes]]
name = "bench-sign"
listener = "sign"
mode = "sign"
upstream = "{upstream}"
keyring = "bench"
max_body_bytes = {max_body_bytes}

[[routes]]
name = "bench-verify"
listener = "verify"
mode = "verify"
upstream = "{upstream}"
keyring = "bench"
max_body_bytes = {max_body_bytes}
replay_protection = {"true" if replay_protection else "false"}
"""


@dataclass
class Stack:
    """Upstreams, baseline proxies and gateways for each worker count, all on loopback.

    Two upstream processes: one behind the baselines, one behind the gateways, so that two
    proxies loaded at the same time do not queue behind one upstream. Replay protection needs
    one store shared by all workers, so a gateway with more than one worker uses a Redis
    replay store (a ``redis-server`` we start); one worker uses the default in-memory store.
    """

    workdir: Path
    workers: Sequence[int] = (1, 2)
    with_baseline: bool = True
    log_level: str = "info"
    replay_protection: bool = True
    max_body_bytes: int = 1024 * 1024
    redis_for_one_worker: bool = False
    gateway_log: Path | None = None  # default: discarded (one JSON line per request)
    services: list[Service] = field(default_factory=list)
    targets: dict[tuple[str, int], Target] = field(default_factory=dict)
    keyring: Path = field(init=False)
    _redis_url: str = field(init=False, default="")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keyring = self.workdir / "bench-keyring.json"
        self.keyring.write_text(json.dumps({"bench-key-1": secrets.token_hex(32)}))
        self.keyring.chmod(0o600)
        python = [sys.executable, "-m"]
        try:
            upstreams: dict[str, str] = {}
            upstream_svc: dict[str, Service] = {}
            for side in ("baseline", "gateway") if self.with_baseline else ("gateway",):
                port = free_port()
                svc = self._spawn(f"upstream-{side}", [*python, "bench.upstream", "--port", str(port)])
                wait_ready(svc, port, 1, f"http://127.0.0.1:{port}/")
                upstreams[side] = f"http://127.0.0.1:{port}"
                upstream_svc[side] = svc
            redis: Service | None = None
            if self.replay_protection and any(n > 1 or self.redis_for_one_worker for n in self.workers):
                redis = self._start_redis()
            for n in self.workers:
                if self.with_baseline:
                    port = free_port()
                    argv = [*python, "bench.baseline_proxy", "--port", str(port), "--upstream", upstreams["baseline"]]
                    svc = self._spawn(f"baseline-{n}w", [*argv, "--workers", str(n)])
                    wait_ready(svc, port, n, f"http://127.0.0.1:{port}/")
                    self.targets["baseline", n] = Target("baseline", n, port, svc, upstream_svc["baseline"])
                sign_port, verify_port = free_port(), free_port()
                config = self.workdir / f"gateway-{n}w.toml"
                store = redis if redis is not None and (n > 1 or self.redis_for_one_worker) else None
                config.write_text(
                    gateway_toml(
                        self.keyring,
                        sign_port,
                        verify_port,
                        upstreams["gateway"],
                        log_level=self.log_level,
                        replay_protection=self.replay_protection,
                        max_body_bytes=self.max_body_bytes,
                        redis_url=self._redis_url if store else None,
                    )
                )
                argv = [*gateway_command(), "--config", str(config), "serve"]
                if n > 1:
                    argv += ["--workers", str(n)]
                svc = self._spawn(f"gateway-{n}w", argv, log=self.gateway_log)
                try:
                    for port in (sign_port, verify_port):
                        wait_ready(svc, port, n, f"http://127.0.0.1:{port}/readyz")
                except RuntimeError as exc:
                    check = subprocess.run(
                        [*gateway_command(), "--config", str(config), "check-config"],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    raise RuntimeError(f"{exc}\ncheck-config says: {check.stderr or check.stdout}") from None
                self.targets["sign", n] = Target("sign", n, sign_port, svc, upstream_svc["gateway"])
                self.targets["verify", n] = Target("verify", n, verify_port, svc, upstream_svc["gateway"], store)
        except BaseException:
            self.stop()
            raise

    def _start_redis(self) -> Service:
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        svc = self._spawn("redis", [*argv, "--maxmemory-policy", "noeviction", "--dir", str(self.workdir)])
        deadline = time.monotonic() + 15
        while listening_sockets(port) < 1:
            svc.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self._redis_url = f"redis://127.0.0.1:{port}/0"
        return svc

    def _spawn(self, name: str, argv: list[str], log: Path | None = None) -> Service:
        path = log or (self.workdir / f"{name}.log")
        if name.startswith("gateway") and log is None:
            path = Path(os.devnull)
        svc = Service(name, argv, path)
        self.services.append(svc)
        return svc

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()


# -- load generators -------------------------------------------------------------------------


@dataclass
class LoadResult:
    target: str
    payload: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx answers + timeouts
    wraps: int = 0  # pre-signed pool exhausted (replays): the run is invalid
    generator_cpu: float = 0.0  # fraction of one core used by the load generator
    proxy_cpu_s: float = 0.0  # CPU seconds of the proxy process tree during the run
    upstream_cpu_s: float = 0.0  # CPU seconds of its upstream during the run
    machine_busy_s: float = 0.0  # CPU seconds the whole machine was busy during the run
    store_cpu_s: float = 0.0  # CPU seconds of the Redis replay store, if any (not in proxy_cpu_s)
    replay_store: str = ""
    generator: str = "wrk"

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.proxy_cpu_s / self.requests * 1e6 if self.requests else math.nan

    @property
    def proxy_cores(self) -> float:
        return self.proxy_cpu_s / self.seconds if self.seconds else 0.0

    @property
    def valid(self) -> bool:
        return self.errors == 0 and self.wraps == 0 and self.requests > 0

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "payload": self.payload,
            "generator": self.generator,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "cpu_us_per_request": round(self.cpu_us_per_request, 2),
            "proxy_cores": round(self.proxy_cores, 3),
            "upstream_cores": round(self.upstream_cpu_s / self.seconds if self.seconds else 0.0, 3),
            "machine_busy_cores": round(self.machine_busy_s / self.seconds if self.seconds else 0.0, 3),
            "replay_store": self.replay_store,
            "store_cpu_us_per_request": round(self.store_cpu_s / self.requests * 1e6, 2) if self.requests else None,
            "generator_cpu": round(self.generator_cpu, 3),
            "errors": self.errors,
            "wraps": self.wraps,
        }


class WrkRun:
    """One bounded wrk process (``-d seconds``) sending a request pool; started, then finished."""

    def __init__(
        self,
        target: Target,
        payload: Payload,
        workdir: Path,
        *,
        seconds: float,
        connections: int = 32,
        threads: int = 1,
        signer: Signer | None = None,
        pool_size: int = 0,
    ) -> None:
        seconds = max(1, round(seconds))  # wrk takes whole seconds
        self.target, self.payload, self.seconds = target, payload, seconds
        self.prefix = workdir / f"pool-{target.kind}-{target.workers}w-{secrets.token_hex(4)}"
        if target.kind == "verify":
            if signer is None:
                raise ValueError("the verify route needs a signing client")
            per_thread = math.ceil(pool_size / threads)
            authority = target.authority
            write_pool(
                self.prefix,
                [
                    [
                        request_head(payload, authority, signer.signature_headers(payload, authority))
                        for _ in range(per_thread)
                    ]
                    for _ in range(threads)
                ],
            )
        else:
            write_pool(self.prefix, [[request_head(payload, target.authority)]] * threads)
        self.argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            target.url,
            "--",
            str(self.prefix),
            str(payload.size),
            "1" if target.kind == "verify" else "0",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_before = 0.0
        self.upstream_before = 0.0
        self.machine_before = 0.0
        self.store_before = 0.0
        self.started = 0.0

    def _upstream_cpu(self) -> float:
        return self.target.upstream.cpu() if self.target.upstream else 0.0

    def _store_cpu(self) -> float:
        return self.target.store.cpu() if self.target.store else 0.0

    def start(self) -> None:
        self.cpu_before = self.target.service.cpu()
        self.upstream_before = self._upstream_cpu()
        self.machine_before = machine_busy_seconds()
        self.store_before = self._store_cpu()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(self) -> LoadResult:
        assert self.proc is not None
        deadline = self.started + self.seconds + 30
        rusage = None
        while rusage is None:
            pid, _status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                rusage = usage
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                os.waitpid(self.proc.pid, 0)
                raise RuntimeError(f"wrk did not stop: {self.argv}")
            time.sleep(0.02)
        self.proc.returncode = 0  # reaped by wait4
        proxy_cpu = self.target.service.cpu() - self.cpu_before
        upstream_cpu = self._upstream_cpu() - self.upstream_before
        machine = machine_busy_seconds() - self.machine_before
        store = self._store_cpu() - self.store_before
        stdout = self.proc.stdout.read().decode() if self.proc.stdout else ""
        stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
        for path in self.prefix.parent.glob(self.prefix.name + ".*"):
            path.unlink()
        line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result: {stdout}\n{stderr}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        seconds = data["duration_us"] / 1e6
        errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
        return LoadResult(
            target=self.target.label,
            payload=self.payload.name,
            requests=data["requests"],
            seconds=seconds,
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            errors=errors,
            wraps=data["wraps"],
            generator_cpu=(rusage.ru_utime + rusage.ru_stime) / seconds,
            proxy_cpu_s=proxy_cpu,
            upstream_cpu_s=upstream_cpu,
            machine_busy_s=machine,
            store_cpu_s=store,
            replay_store=self.target.replay_store,
        )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def _open_loop(
    target: Target, payload: Payload, rate: float, count: int, signer: Signer | None, connections: int
) -> tuple[list[float], int, float]:
    """Send ``count`` requests at a fixed ``rate`` (open loop); latency from the *scheduled* time."""
    latencies: list[float] = []
    errors = 0
    url = f"{target.url}{PATH}?{QUERY}"
    body = payload.body
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as s:

        async def one(scheduled: float) -> None:
            nonlocal errors
            headers: dict[str, str] = {"Content-Type": CONTENT_TYPE} if payload.method != "GET" else {}
            if signer is not None:
                headers.update(signer.signature_headers(payload, target.authority))
            try:
                async with s.request(payload.method, url, headers=headers, data=body or None) as response:
                    await response.read()
                    if response.status >= 400:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - scheduled)

        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tasks = []
        for i in range(count):
            scheduled = started + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(scheduled)))
        await asyncio.wait(tasks, timeout=30)
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
    return latencies, errors, elapsed


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def open_loop(
    targets: Sequence[Target],
    payload: Payload,
    *,
    rate: float,
    seconds: float,
    signer: Signer | None = None,
    connections: int = 64,
) -> list[LoadResult]:
    """Fixed-rate load from this process (aiohttp client), for latency at equal load.

    All ``targets`` are loaded at the same time, each at ``rate`` (own session and schedule), so
    whatever else disturbs the machine disturbs them alike. ``signer`` signs requests to verify
    routes. ``generator_cpu`` is this process's CPU share for all of them together.
    """
    count = max(1, int(rate * seconds))
    before = [(t.service.cpu(), machine_busy_seconds()) for t in targets]
    usage_before = os.times()

    async def all_at_once() -> list[tuple[list[float], int, float]]:
        return await asyncio.gather(
            *(_open_loop(t, payload, rate, count, signer if t.kind == "verify" else None, connections) for t in targets)
        )

    with asyncio.Runner(loop_factory=serving.loop_factory("auto")) as runner:
        outcomes = runner.run(all_at_once())
    usage_after = os.times()
    own_cpu = (usage_after.user - usage_before.user) + (usage_after.system - usage_before.system)
    results = []
    for target, (cpu0, machine0), (latencies, _errors, elapsed) in zip(targets, before, outcomes, strict=True):
        results.append(
            LoadResult(
                target=target.label,
                payload=payload.name,
                requests=len(latencies),
                seconds=elapsed,
                p50_ms=percentile(latencies, 50) * 1000,
                p99_ms=percentile(latencies, 99) * 1000,
                errors=count - len(latencies),  # refused, failed or unfinished
                generator_cpu=own_cpu / elapsed,
                proxy_cpu_s=target.service.cpu() - cpu0,
                machine_busy_s=machine_busy_seconds() - machine0,
                generator="python-open-loop",
            )
        )
    return results
