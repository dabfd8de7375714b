"""What the gateway costs, measured against a plain aiohttp proxy in the same run.

    python -m bench.run [--quick] [--seconds S] [--repeats R] [--skip-micro] [--skip-memory]

One run starts (separate processes, loopback, free ports): two upstreams (bench/upstream.py),
the baseline proxy (bench/baseline_proxy.py) with 1 and with 2 workers, and the gateway through
its real CLI (``hmac-gateway --config <generated> serve [--workers 2]``) with a sign route and a
verify route. Then, for GET, POST 1 KiB and POST 256 KiB at 1 and 2 workers:

1. interleaved: each of baseline / sign / verify alone, wrk for S seconds, R rounds, the order
   rotated every round;
2. concurrent: baseline and one gateway route loaded *at the same time* (each by its own wrk),
   R rounds: both get the same share of the machine, so the requests/s ratio is measured under
   the same conditions (run-to-run noise here is ±20-25 %);
3. fixed rate: an open-loop Python client loads the baseline and one gateway route at once,
   both at the same rate (30 % of the slowest one's throughput), for p50/p99 at equal load.

CPU per request is the proxy's process-tree CPU time (utime + stime from /proc, summed over
workers) divided by the requests served. The verify route is fed pre-signed requests (distinct
nonces, fresh ``created``, signed with the gateway's keyring file) that wrk cycles through from
a Lua table; replay protection stays on. Results go to bench/results/<date>-<host-kind>.md/.json.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench import common, memory, micro
from bench.common import PAYLOADS, LoadResult, Payload, Signer, Stack, WrkRun

KINDS = ("baseline", "sign", "verify")
GATEWAY_KINDS = ("sign", "verify")
SMALL = ("GET", "POST 1 KiB")
T = TypeVar("T")


@dataclass
class Settings:
    seconds: float
    repeats: int
    connections: int
    fixed_seconds: float
    fixed_load: float
    workers: tuple[int, ...]
    log_level: str
    quick: bool


@dataclass
class Record:
    phase: str  # interleaved | concurrent | fixed
    round: int
    workers: int
    kind: str
    result: LoadResult
    pair: str = ""

    def as_dict(self) -> dict[str, Any]:
        return (
            {"phase": self.phase, "round": self.round, "workers": self.workers, "kind": self.kind}
            | ({"pair": self.pair} if self.pair else {})
            | self.result.as_dict()
        )


@dataclass
class Bench:
    stack: Stack
    settings: Settings
    workdir: Path
    signer: Signer
    records: list[Record] = field(default_factory=list)
    log: Callable[[str], None] = print

    def pool_size(self, payload: Payload, workers: int) -> int:
        """Signed requests for one verify run: 1.5 x the fastest rate seen in this cell, plus slack."""
        seen = [
            r.result.rps
            for r in self.records
            if r.workers == workers and r.result.payload == payload.name and r.phase != "fixed"
        ]
        guess = max(seen) if seen else (4_000.0 if payload.size > 64 * 1024 else 15_000.0)
        return math.ceil(guess * 1.5 * (max(1, round(self.settings.seconds)) + 1)) + 500

    def wrk(self, kind: str, workers: int, payload: Payload, seconds: float | None = None) -> WrkRun:
        target = self.stack.targets[kind, workers]
        return WrkRun(
            target,
            payload,
            self.workdir,
            seconds=seconds or self.settings.seconds,
            connections=self.settings.connections,
            signer=self.signer,
            pool_size=self.pool_size(payload, workers) if kind == "verify" else 0,
        )

    def note(self, record: Record) -> None:
        self.records.append(record)
        r = record.result
        flag = "" if r.valid else f"  INVALID errors={r.errors} wraps={r.wraps}"
        self.log(
            f"  {record.phase:<11} r{record.round} {r.target:<12} {r.payload:<12} {r.rps:8.0f} req/s "
            f"p50 {r.p50_ms:6.2f} p99 {r.p99_ms:6.2f} ms  cpu {r.cpu_us_per_request:6.1f} µs/req "
            f"proxy {r.proxy_cores:4.2f} cores  gen {r.generator_cpu:4.2f}{flag}"
        )

    def cells(self) -> list[tuple[int, Payload]]:
        return [(w, p) for w in self.settings.workers for p in PAYLOADS]

    def warm_up(self) -> None:
        self.log("warm-up")
        for (workers, payload), kind in itertools.product(self.cells(), KINDS):
            run = self.wrk(kind, workers, payload, seconds=1)
            run.start()
            run.finish()

    def interleaved(self) -> None:
        self.log("interleaved: one configuration at a time, order rotated every round")
        for rnd in range(self.settings.repeats):
            for workers, payload in _rotate(self.cells(), rnd):
                for kind in _rotate(KINDS, rnd):
                    run = self.wrk(kind, workers, payload)
                    run.start()
                    self.note(Record("interleaved", rnd, workers, kind, run.finish()))

    def concurrent(self) -> None:
        self.log("concurrent: baseline and one gateway route loaded at the same time")
        for rnd in range(self.settings.repeats):
            for workers, payload in _rotate(self.cells(), rnd):
                for kind in _rotate(GATEWAY_KINDS, rnd):
                    pair = f"baseline+{kind}"
                    runs = [self.wrk("baseline", workers, payload), self.wrk(kind, workers, payload)]
                    for run in runs:
                        run.start()
                    results = [run.finish() for run in runs]
                    for k, result in zip(("baseline", kind), results, strict=True):
                        self.note(Record("concurrent", rnd, workers, k, result, pair=pair))

    def fixed_rate(self) -> None:
        self.log(
            f"fixed rate: open-loop Python client, baseline and one gateway route at once, each at "
            f"{self.settings.fixed_load:.0%} of the slowest one's throughput"
        )
        for rnd in range(self.settings.repeats):
            for workers, payload in _rotate(self.cells(), rnd):
                slowest = min(
                    _median(r.result.rps for r in self.select("interleaved", workers, payload.name, kind))
                    for kind in KINDS
                )
                rate = max(50.0, round(slowest * self.settings.fixed_load, -1))
                for kind in _rotate(GATEWAY_KINDS, rnd):
                    results = common.open_loop(
                        [self.stack.targets["baseline", workers], self.stack.targets[kind, workers]],
                        payload,
                        rate=rate,
                        seconds=self.settings.fixed_seconds,
                        signer=self.signer,
                    )
                    for k, result in zip(("baseline", kind), results, strict=True):
                        self.note(Record("fixed", rnd, workers, k, result, pair=f"baseline+{kind}"))

    def select(self, phase: str, workers: int, payload: str, kind: str, pair: str = "") -> list[Record]:
        return [
            r
            for r in self.records
            if r.phase == phase
            and r.workers == workers
            and r.result.payload == payload
            and r.kind == kind
            and (not pair or r.pair == pair)
        ]


def _rotate(items: Sequence[T], n: int) -> list[T]:
    n %= len(items)
    return [*items[n:], *items[:n]]


def _median(values: Iterable[float]) -> float:
    data = [v for v in values if not math.isnan(v)]
    return statistics.median(data) if data else math.nan


# -- aggregation -----------------------------------------------------------------------------


def _paired(bench: Bench, phase: str, workers: int, payload: str, kind: str) -> list[tuple[LoadResult, LoadResult]]:
    """(baseline, kind) results of the same round (and the same pair when concurrent)."""
    pair = f"baseline+{kind}" if phase in ("concurrent", "fixed") else ""
    base = {r.round: r.result for r in bench.select(phase, workers, payload, "baseline", pair)}
    other = {r.round: r.result for r in bench.select(phase, workers, payload, kind, pair)}
    return [(base[k], other[k]) for k in sorted(base.keys() & other.keys())]


def aggregate(bench: Bench) -> list[dict[str, Any]]:
    rows = []
    for workers, payload in bench.cells():
        for kind in KINDS:
            seq = [r.result for r in bench.select("interleaved", workers, payload.name, kind)]
            fixed = [r.result for r in bench.select("fixed", workers, payload.name, kind)]
            rps = [r.rps for r in seq]
            row: dict[str, Any] = {
                "workers": workers,
                "payload": payload.name,
                "kind": kind,
                "rps": _median(rps),
                "rps_spread_pct": (max(rps) - min(rps)) / _median(rps) * 100 if rps else math.nan,
                "p50_ms": _median(r.p50_ms for r in seq),
                "p99_ms": _median(r.p99_ms for r in seq),
                "cpu_us": _median(r.cpu_us_per_request for r in seq),
                "proxy_cores": _median(r.proxy_cores for r in seq),
                "generator_cpu_max": max((r.generator_cpu for r in seq), default=math.nan),
                "fixed_rate": _median(r.rps for r in fixed),
                "fixed_p50_ms": _median(r.p50_ms for r in fixed),
                "fixed_p99_ms": _median(r.p99_ms for r in fixed),
                "replay_store": next((r.replay_store for r in seq if r.replay_store), ""),
                "store_cpu_us": _median(r.store_cpu_s / r.requests * 1e6 for r in seq if r.requests and r.store_cpu_s),
                "invalid_runs": sum(
                    not r.result.valid
                    for r in bench.records
                    if r.workers == workers and r.kind == kind and r.result.payload == payload.name
                ),
            }
            if kind != "baseline":
                seq_pairs = _paired(bench, "interleaved", workers, payload.name, kind)
                con_pairs = _paired(bench, "concurrent", workers, payload.name, kind)
                fix_pairs = _paired(bench, "fixed", workers, payload.name, kind)
                row |= {
                    "ratio_interleaved": _median(g.rps / b.rps for b, g in seq_pairs),
                    "ratio_concurrent": _median(g.rps / b.rps for b, g in con_pairs),
                    "cpu_delta_us": _median(g.cpu_us_per_request - b.cpu_us_per_request for b, g in seq_pairs),
                    "cpu_delta_concurrent_us": _median(
                        g.cpu_us_per_request - b.cpu_us_per_request for b, g in con_pairs
                    ),
                    "cpu_ratio_concurrent": _median(g.cpu_us_per_request / b.cpu_us_per_request for b, g in con_pairs),
                    "concurrent_rps": _median(g.rps for _, g in con_pairs),
                    "concurrent_baseline_rps": _median(b.rps for b, _ in con_pairs),
                    "concurrent_p99_ratio": _median(g.p99_ms / b.p99_ms for b, g in con_pairs),
                    "fixed_p99_ratio": _median(g.p99_ms / b.p99_ms for b, g in fix_pairs),
                }
            rows.append(row)
    return rows


def scaling(rows: list[dict[str, Any]], workers: Sequence[int]) -> list[dict[str, Any]]:
    if not {1, 2} <= set(workers):
        return []
    by = {(r["workers"], r["payload"], r["kind"]): r for r in rows}
    return [
        {"payload": p.name, "kind": k, "ratio": by[2, p.name, k]["rps"] / by[1, p.name, k]["rps"]}
        for p in PAYLOADS
        for k in KINDS
    ]


def targets(
    rows: list[dict[str, Any]],
    scale: list[dict[str, Any]],
    micro_result: dict[str, Any] | None,
    memory_result: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Issue 4's targets, judged on the concurrent ratios (interleaved shown beside them)."""
    gw = [r for r in rows if r["kind"] != "baseline"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: str, met: bool | None) -> None:
        out.append({"target": name, "measured": value, "met": met})

    def ratios(kind: str, payloads: Sequence[str], bound: float) -> None:
        sel = [r for r in gw if r["kind"] == kind and r["payload"] in payloads]
        text = "; ".join(
            f"{r['payload']} {r['workers']}w {r['ratio_concurrent']:.2f} (interleaved {r['ratio_interleaved']:.2f})"
            for r in sel
        )
        add(
            f"{kind} route >= {bound:.2f} x baseline req/s ({', '.join(payloads)})",
            text,
            all(r["ratio_concurrent"] >= bound for r in sel),
        )

    ratios("sign", SMALL, 0.90)
    ratios("verify", SMALL, 0.90)
    small = [r for r in gw if r["payload"] in SMALL]
    add(
        "CPU added per small request <= 15 µs",
        "; ".join(f"{r['kind']} {r['payload']} {r['workers']}w {r['cpu_delta_us']:+.0f}" for r in small),
        all(r["cpu_delta_us"] <= 15 for r in small),
    )
    ratios("sign", ("POST 256 KiB",), 0.75)
    ratios("verify", ("POST 256 KiB",), 0.75)
    for kind, bound in (("verify", 1.05), ("sign", 1.0)):  # issue 8, item 11
        sel = [r for r in gw if r["kind"] == kind and r["payload"] in SMALL and r["workers"] == 1]
        add(
            f"{kind} route CPU per request <= {bound:.2f} x baseline (concurrent, 1 worker, GET and POST 1 KiB)",
            "; ".join(f"{r['payload']} {r['cpu_ratio_concurrent']:.2f}" for r in sel),
            all(r["cpu_ratio_concurrent"] <= bound for r in sel),
        )
    add(
        "p99 <= 1.2 x baseline at the same load (fixed rate)",
        "; ".join(f"{r['kind']} {r['payload']} {r['workers']}w {r['fixed_p99_ratio']:.2f}" for r in gw),
        all(r["fixed_p99_ratio"] <= 1.2 for r in gw),
    )
    if micro_result is not None:
        speedup = micro_result["speedup"]
        add("our sign + verify >= 5 x http-message-signatures", f"{speedup:.1f}x", speedup >= 5)
        metrics_us = micro_result["timings"]["metrics_per_request"]["median_us"]
        verify_cpu = [r["cpu_us"] for r in gw if r["kind"] == "verify" and r["payload"] in SMALL]
        if verify_cpu:
            share = metrics_us / min(verify_cpu)
            add(
                "metrics < 5 % of the verify route's CPU per request",
                f"{metrics_us:.2f} µs of {min(verify_cpu):.0f} µs = {share:.1%}",
                share < 0.05,
            )
    if scale:
        sel = [s for s in scale if s["payload"] in SMALL]
        add(
            "--workers 2 >= 1.3 x one worker (interleaved medians)",
            "; ".join(f"{s['kind']} {s['payload']} {s['ratio']:.2f}" for s in sel),
            all(s["ratio"] >= 1.3 for s in sel if s["kind"] != "baseline"),
        )
    if memory_result is not None:
        s = memory_result["soak"]["sign"]
        add(
            "RSS after soak within 10 % (sign route)",
            f"{s['rss_before_mib']} -> {s['rss_after_mib']} MiB ({s['growth_pct']:+.1f} %) over {s['requests']:,}",
            abs(s["growth_pct"]) <= 10,
        )
        add(
            "peak RSS <= N x limit + C",
            f"C = {memory_result['constant_mib']} MiB at N = 64, limit 1 MiB",
            None,
        )
    return out


# -- output ----------------------------------------------------------------------------------


def _label(row: dict[str, Any]) -> str:
    return f"{row['kind']} (Redis replay store)" if row["replay_store"] == "redis" else row["kind"]


def _f(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+,.0f}"


def markdown(
    bench: Bench,
    rows: list[dict[str, Any]],
    scale: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    env: dict[str, Any],
    micro_result: dict[str, Any] | None,
    memory_result: dict[str, Any] | None,
    command: str,
) -> str:
    s = bench.settings
    gen_max = max((r.result.generator_cpu for r in bench.records if r.phase != "fixed"), default=math.nan)
    fixed_gen = max((r.result.generator_cpu for r in bench.records if r.phase == "fixed"), default=math.nan)
    invalid = sum(not r.result.valid for r in bench.records)
    foreign = [
        (r.result.machine_busy_s - r.result.proxy_cpu_s - r.result.upstream_cpu_s) / r.result.seconds
        - r.result.generator_cpu
        for r in bench.records
        if r.phase == "interleaved" and r.result.seconds
    ]
    changed = env["gateway_sources_sha256"] != env.get("gateway_sources_sha256_end")
    lines = [
        f"# hmac-gateway benchmark, {env['date']}",
        "",
        f"Command: `{command}`  ",
        f"Host: {env['cpus']} CPUs ({env['cpu_model']}), Linux {env['kernel']}, Python {env['python']}, "
        f"aiohttp {env['aiohttp']}; event loop of gateway and baseline: stock asyncio (the gateway's `serve` "
        f"uses `asyncio.run`); upstreams: {env['upstream_loop']}.  ",
        f"Load generator: {env['generator']}, 1 thread, {s.connections} connections, {s.seconds:g} s per run, "
        f"{s.repeats} rounds; busiest wrk used {_f(gen_max * 100)} % of one core (not saturated). Fixed-rate "
        f"phase: Python open-loop client, {s.fixed_seconds:g} s per run, at most {_f(fixed_gen * 100)} % of a core.  ",
        f"Gateway: log_level {s.log_level}, replay protection on, keyring = one flat-map key; git {env['git_head']}"
        f"{' + uncommitted changes in gateway/' if env['gateway_dirty'] else ''}, sources sha256 "
        f"{env['gateway_sources_sha256']}{' (CHANGED during the run)' if changed else ''}.  ",
        f"Invalid runs (errors or an exhausted signed pool): {invalid}. Other load on the machine during the "
        f"interleaved runs (busy CPU not used by proxy, upstream or wrk): median {_f(_median(foreign), 2)}, "
        f"max {_f(max(foreign, default=math.nan), 2)} cores; load average {env['loadavg_start'][0]:.2f} at start, "
        f"{env['loadavg_end'][0]:.2f} at end.",
        "",
        "## Throughput, latency and CPU (medians over rounds)",
        "",
        "Interleaved: each configuration alone. Ratio columns: gateway / baseline of the same round "
        "(interleaved) and of the same simultaneous pair (concurrent). ΔCPU: gateway minus baseline µs/req, "
        "same round.",
        "",
        "| workers | payload | target | req/s | spread | p50 ms | p99 ms | CPU µs/req | ΔCPU µs | ratio "
        "interleaved | ratio concurrent | fixed rate req/s | fixed p50 ms | fixed p99 ms | p99 ratio at fixed rate |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gw = r["kind"] != "baseline"
        lines.append(
            f"| {r['workers']} | {r['payload']} | {_label(r)} | {_f(r['rps'])} | ±{_f(r['rps_spread_pct'] / 2)} % "
            f"| {_f(r['p50_ms'], 2)} | {_f(r['p99_ms'], 2)} | {_f(r['cpu_us'])} "
            f"| {_signed(r['cpu_delta_us']) if gw else ''} | {_f(r['ratio_interleaved'], 2) if gw else ''} "
            f"| {_f(r['ratio_concurrent'], 2) if gw else ''} | {_f(r['fixed_rate'])} | {_f(r['fixed_p50_ms'], 2)} "
            f"| {_f(r['fixed_p99_ms'], 2)} | {_f(r['fixed_p99_ratio'], 2) if gw else ''} |"
        )
    redis_rows = [r for r in rows if r["replay_store"] == "redis"]
    if redis_rows:
        lines += [
            "",
            "Replay protection is on everywhere. One worker uses the in-memory store; `--workers 2` must use a "
            "shared store (the gateway refuses otherwise), so the 2-worker verify rows use Redis (our own "
            "`redis-server`, loopback). Its CPU is not in the columns above: "
            + "; ".join(f"{r['payload']} {_f(r['store_cpu_us'])} µs/req" for r in redis_rows)
            + " of Redis CPU.",
        ]
    lines += [
        "",
        "Concurrent pairs (both loaded at once; medians): gateway req/s vs baseline req/s, CPU µs/req",
        "ratio and delta (gateway / baseline, gateway minus baseline, of the same pair).",
        "",
        "| workers | payload | route | gateway req/s | baseline req/s | ratio | CPU ratio | ΔCPU µs | p99 ratio |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] != "baseline":
            lines.append(
                f"| {r['workers']} | {r['payload']} | {_label(r)} | {_f(r['concurrent_rps'])} "
                f"| {_f(r['concurrent_baseline_rps'])} | {_f(r['ratio_concurrent'], 2)} "
                f"| {_f(r['cpu_ratio_concurrent'], 2)} | {_signed(r['cpu_delta_concurrent_us'])} "
                f"| {_f(r['concurrent_p99_ratio'], 2)} |"
            )
    if scale:
        lines += [
            "",
            "## --workers 2 vs 1 (interleaved medians; wrk and the upstream share the same 2 cores)",
            "",
            "| payload | " + " | ".join(KINDS) + " |",
            "|---|" + "---:|" * len(KINDS),
        ]
        for p in PAYLOADS:
            cells = [next(s["ratio"] for s in scale if s["payload"] == p.name and s["kind"] == k) for k in KINDS]
            lines.append(f"| {p.name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    if micro_result is not None:
        lines += ["", "## Micro-benchmark (bench/micro.py)", "", micro.format_markdown(micro_result)]
    if memory_result is not None:
        lines += ["", "## Memory (bench/memory.py)", "", memory.format_markdown(memory_result)]
    lines += ["", "## Targets (issue 4)", "", "| target | measured | met |", "|---|---|---|"]
    for c in checks:
        met = "stated" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['target']} | {c['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = ""
    if common.wrk_available():
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk_version = (out.stdout or out.stderr).split("[")[0].strip()
    try:
        import uvloop  # noqa: F401

        upstream_loop = "uvloop"
    except ImportError:
        upstream_loop = "stock asyncio"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "gateway"], capture_output=True, text=True, check=False, cwd=common.REPO
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_head": head.stdout.strip(),
        "gateway_dirty": bool(dirty.stdout.strip()),
        "gateway_sources_sha256": common.source_fingerprint(),
        "loadavg_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "generator": wrk_version or "wrk",
        "upstream_loop": upstream_loop,
        "machine": platform.machine(),
    }


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, 1 round, small memory check")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per wrk run (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of every phase (default 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--fixed-seconds", type=float, default=None, help="seconds per fixed-rate run (default 3)")
    parser.add_argument("--fixed-load", type=float, default=0.3, help="fixed rate as a fraction of the slowest")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--host-kind", default=None, help="results file name part (default <cpus>cpu-<arch>)")
    parser.add_argument("--out", type=Path, default=common.BENCH / "results")
    args = parser.parse_args(argv)
    settings = Settings(
        seconds=args.seconds or (1 if args.quick else 4),
        repeats=args.repeats or (1 if args.quick else 3),
        connections=args.connections,
        fixed_seconds=args.fixed_seconds or (1.0 if args.quick else 3.0),
        fixed_load=args.fixed_load,
        workers=tuple(int(w) for w in args.workers.split(",")),
        log_level=args.log_level,
        quick=args.quick,
    )
    return settings, args


def main(argv: list[str] | None = None) -> None:
    settings, args = parse_args(argv)
    if not common.wrk_available():
        sys.exit("bench: wrk is required (apt-get install wrk); see bench/README.md")
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    env = environment()
    workdir = Path(tempfile.mkdtemp(prefix="hmac-bench-"))
    stack = Stack(workdir, workers=settings.workers, log_level=settings.log_level)

    def stamp(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {msg}", flush=True)

    try:
        stack.start()
        bench = Bench(stack, settings, workdir, Signer(stack.keyring), log=stamp)
        bench.warm_up()
        bench.interleaved()
        bench.concurrent()
        bench.fixed_rate()
    finally:
        stack.stop()
    env["loadavg_end"] = os.getloadavg()
    env["gateway_sources_sha256_end"] = common.source_fingerprint()
    micro_result = memory_result = None
    if not args.skip_micro:
        stamp("micro-benchmark")
        micro_result = micro.run(settings.quick)
    if not args.skip_memory:
        stamp("memory check")
        memory_result = memory.run(settings.quick)
    shutil.rmtree(workdir, ignore_errors=True)

    rows = aggregate(bench)
    scale = scaling(rows, settings.workers)
    checks = targets(rows, scale, micro_result, memory_result)
    report = markdown(bench, rows, scale, checks, env, micro_result, memory_result, command)
    print()
    print(report)
    host_kind = args.host_kind or f"{env['cpus']}cpu-{env['machine']}" + ("-quick" if settings.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"{datetime.date.today().isoformat()}-{host_kind}"
    base.with_suffix(".md").write_text(report, encoding="utf-8")
    document = {
        "schema": 1,
        "command": command,
        "environment": env,
        "settings": settings.__dict__,
        "rows": rows,
        "workers_scaling": scale,
        "targets": checks,
        "micro": micro_result,
        "memory": memory_result,
        "runs": [r.as_dict() for r in bench.records],
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    base.with_suffix(".json").write_text(json.dumps(_finite(document), indent=2, default=str) + "\n")
    stamp(f"wrote {base}.md and .json")


def _finite(value: Any) -> Any:
    """NaN (a cell with no data) becomes null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    main()
