"""Memory check: gateway RSS before/after a bounded soak, and peak RSS with concurrent uploads.

1. Soak: a fresh gateway (1 worker, default config apart from ports) gets a warm-up, then
   RSS is read (VmRSS), then ``--requests`` (default 200,000) requests on the **sign** route
   (alternating GET and POST 1 KiB, wrk, in bounded chunks), then RSS again. The same is done
   on the **verify** route, whose replay store must by design remember every nonce for the
   300 s window: its growth is reported next to the store's measured cost per entry.
2. Uploads: VmHWM is reset (``/proc/<pid>/clear_refs``), then N uploads of exactly the body
   limit are sent at once to the sign route (then the verify route), for N = 16, 32, 64;
   the peak is compared with ``idle RSS + N x limit``.

    python -m bench.memory [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp

from bench import common
from bench.common import PAYLOADS, Payload, Signer, Stack, Target, WrkRun
from gateway.replay import replay_key
from gateway.replay.memory import MemoryReplayStore

MIB = 1024 * 1024
BODY_LIMIT = MIB  # the route default, max_body_bytes = 1048576


def rss_kib(target: Target) -> int:
    return common.status_kib(target.service.pid, "VmRSS")


def soak(
    target: Target, workdir: Path, signer: Signer, total: int, chunk_seconds: float, max_seconds: float
) -> dict[str, Any]:
    """At least ``total`` requests in wrk chunks, alternating GET / POST 1 KiB; bounded in time."""
    done, chunks, errors = 0, 0, 0
    trace: list[float] = []
    started = time.monotonic()
    rate = 5000.0  # first guess of requests/s, refined after each chunk (sizes the signed pool)
    while done < total and time.monotonic() - started < max_seconds:
        payload = PAYLOADS[chunks % 2]
        seconds = min(chunk_seconds, max(0.5, (total - done) / rate))
        run = WrkRun(target, payload, workdir, seconds=seconds, signer=signer, pool_size=int(rate * seconds * 2) + 500)
        run.start()
        result = run.finish()
        done += result.requests
        errors += result.errors + result.wraps
        rate = max(result.rps, 100.0)
        chunks += 1
        trace.append(round(rss_kib(target) / 1024, 1))
    return {
        "requests": done,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
        "rss_trace_mib": trace,
    }


async def _uploads(target: Target, payload_size: int, concurrency: int, signer: Signer | None) -> int:
    """``concurrency`` uploads of ``payload_size`` bytes at once; returns how many got 2xx."""
    payload = Payload(f"POST {payload_size}", "POST", payload_size)
    body = payload.body
    url = f"{target.url}{common.PATH}?{common.QUERY}"
    ok = 0
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gate = asyncio.Event()

        async def one() -> None:
            nonlocal ok
            headers = {"Content-Type": common.CONTENT_TYPE}
            if signer is not None:
                headers.update(signer.signature_headers(payload, target.authority))
            await gate.wait()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                ok += response.status < 300

        tasks = [asyncio.create_task(one()) for _ in range(concurrency)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks)
    return ok


def peak_with_uploads(target: Target, concurrency: int, signer: Signer | None, idle_kib: int) -> dict[str, Any]:
    pid = target.service.pid
    gc.collect()
    before = rss_kib(target)
    common.reset_peak_rss(pid)
    ok = asyncio.run(_uploads(target, BODY_LIMIT, concurrency, signer))
    peak = common.status_kib(pid, "VmHWM")
    bound = concurrency * BODY_LIMIT // 1024
    return {
        "route": target.kind,
        "concurrency": concurrency,
        "ok": ok,
        "rss_before_mib": round(before / 1024, 1),
        "peak_mib": round(peak / 1024, 1),
        "peak_minus_idle_per_upload_mib": round((peak - idle_kib) / 1024 / concurrency, 2),
        "constant_mib": round((peak - bound) / 1024, 1),  # peak - concurrency x limit
        "rss_after_mib": round(rss_kib(target) / 1024, 1),
    }


def replay_entry_bytes(entries: int = 100_000) -> float:
    """Measured Python heap per remembered nonce in the in-process replay store."""
    store = MemoryReplayStore(max_entries=entries * 2)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    async def fill() -> None:
        for i in range(entries):
            await store.remember(replay_key("bench", "bench-key-1", f"nonce-{i:022d}"), 300.0)

    asyncio.run(fill())
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / entries


def run(quick: bool = False, requests: int | None = None) -> dict[str, Any]:
    total = requests if requests is not None else (20_000 if quick else 200_000)
    levels = (16, 64) if quick else (16, 32, 64)
    workdir = Path(tempfile.mkdtemp(prefix="hmac-bench-mem-"))
    stack = Stack(workdir, workers=(1,), with_baseline=False, max_body_bytes=BODY_LIMIT)
    result: dict[str, Any] = {"body_limit_bytes": BODY_LIMIT, "soak_requests_target": total}
    try:
        stack.start()
        signer = Signer(stack.keyring)
        sign, verify = stack.targets["sign", 1], stack.targets["verify", 1]
        result["rss_idle_mib"] = round(rss_kib(sign) / 1024, 1)
        for target in (sign, verify):  # warm-up: imports, pools, first allocations
            for payload in PAYLOADS[:2]:
                warm = WrkRun(target, payload, workdir, seconds=1.0, signer=signer, pool_size=12_000)
                warm.start()
                warm.finish()
        soaks = {}
        for target in (sign, verify):
            before = rss_kib(target)
            info = soak(target, workdir, signer, total, chunk_seconds=10.0, max_seconds=total / 500)
            after = rss_kib(target)
            info |= {
                "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1),
                "growth_pct": round((after - before) / before * 100, 1),
            }
            soaks[target.kind] = info
        per_entry = replay_entry_bytes()
        soaks["verify"]["replay_entry_bytes"] = round(per_entry)
        soaks["verify"]["replay_store_mib_expected"] = round(soaks["verify"]["requests"] * per_entry / MIB, 1)
        result["soak"] = soaks
    finally:
        stack.stop()
    # Uploads on a second fresh gateway, so the soaks' retained memory does not hide the peak.
    stack = Stack(workdir / "uploads", workers=(1,), with_baseline=False, max_body_bytes=BODY_LIMIT)
    try:
        stack.start()
        signer = Signer(stack.keyring)
        sign, verify = stack.targets["sign", 1], stack.targets["verify", 1]
        for target in (sign, verify):
            warm = WrkRun(target, PAYLOADS[1], workdir, seconds=1.0, signer=signer, pool_size=12_000)
            warm.start()
            warm.finish()
        idle = rss_kib(sign)
        result["uploads_idle_rss_mib"] = round(idle / 1024, 1)
        uploads = [
            peak_with_uploads(target, level, signer if target.kind == "verify" else None, idle)
            for target in (sign, verify)
            for level in levels
        ]
        result["uploads"] = uploads
        # At the largest N the allocator cannot hide anything behind memory kept from a smaller N.
        result["constant_mib"] = max(u["constant_mib"] for u in uploads if u["concurrency"] == max(levels))
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def format_markdown(result: dict[str, Any]) -> str:
    soak = result["soak"]
    lines = [
        f"Fresh gateway, 1 worker, body limit {result['body_limit_bytes'] // MIB} MiB; idle RSS "
        f"{result['rss_idle_mib']} MiB (before any request).",
        "",
        "| soak (after warm-up) | requests | RSS before MiB | RSS after MiB | growth |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("sign", "verify"):
        s = soak[kind]
        lines.append(
            f"| {kind} route | {s['requests']:,} | {s['rss_before_mib']} | {s['rss_after_mib']} | {s['growth_pct']}% |"
        )
    v = soak["verify"]
    lines += [
        "",
        f"RSS after each wrk chunk, sign: {soak['sign']['rss_trace_mib']}; verify: {v['rss_trace_mib']} (MiB).",
        "",
        f"The verify route's replay store keeps every nonce for the 300 s window by design: "
        f"{v['replay_entry_bytes']} B per entry (measured) x {v['requests']:,} = "
        f"{v['replay_store_mib_expected']} MiB expected of its growth.",
        "",
        f"Uploads of exactly the limit, all at once, on a second fresh gateway (idle RSS after warm-up "
        f"{result['uploads_idle_rss_mib']} MiB). Bound: peak <= N x limit + C, C = {result['constant_mib']} MiB "
        f"(the largest peak - N x limit at N = {max(u['concurrency'] for u in result['uploads'])}; "
        "smaller N after a larger one show memory the allocator kept, not a new peak).",
        "",
        "| N uploads | route | RSS before MiB | peak MiB | (peak - idle) / N MiB | peak - N x limit MiB "
        "| RSS after MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for u in result["uploads"]:
        lines.append(
            f"| {u['concurrency']} ({u['ok']} ok) | {u['route']} | {u['rss_before_mib']} | {u['peak_mib']} "
            f"| {u['peak_minus_idle_per_upload_mib']} | {u['constant_mib']} | {u['rss_after_mib']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000-request soaks, fewer upload levels")
    parser.add_argument("--requests", type=int, default=None, help="soak size per route (default 200,000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.quick, args.requests)
    print(json.dumps(result, indent=2) if args.json else format_markdown(result))


if __name__ == "__main__":
    main()
