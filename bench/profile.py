"""Where the CPU goes per request: py-spy on a gateway (or baseline) process under wrk load.

    python -m bench.profile [--target sign|verify|baseline] [--payload GET|"POST 1 KiB"|...]
                            [--seconds 10] [--rate 250] [--out FILE]

Starts a fresh 1-worker stack, warms it up, then records ``py-spy record --format raw``
(blocking sampling: the stacks stay consistent) on the proxy's PID while wrk loads it, and
prints the share of samples per group of code (each sample in the first group any frame of
its stack matches, see GROUPS) and the top functions by self and by inclusive samples.
Idle samples (waiting in epoll) are left out by py-spy: percentages are of on-CPU time.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import PAYLOADS, Signer, Stack, WrkRun

# (group, regular expression on one frame "function (file:line)"). Each sample goes to the
# first group, in this order, that any frame of its stack matches (so the shares add up to
# 100 %): our own steps first, then the upstream client, aiohttp's response and server machinery.
GROUPS: Sequence[tuple[str, str]] = (
    ("access log line", r"\((logging/__init__\.py|gateway/observability\.py|json/)"),
    ("request id (uuid4)", r"^(uuid4|_request_id) "),
    ("RFC 9421 sign (incl. Content-Digest)", r"^(_sign|sign|content_digest) \(gateway/"),
    ("RFC 9421 verify: header checks (plan or general path)", r"^(Planner\.)?check_headers \(gateway/signing"),
    ("RFC 9421 verify: digest + base + MAC (plan or general path)", r"^check_body \(gateway/signing"),
    ("replay store (memory or Redis client)", r"\((gateway/replay/|redis/)"),
    ("header copy (_forward_headers)", r"^_forward_headers "),
    ("read_body (gateway)", r"^read_body \(gateway"),
    (
        "upstream client (gateway/proxy/http1.py; aiohttp's client for the baseline)",
        r"\((gateway/proxy/(http1|http1_head|pool)\.py|aiohttp/(client|client_reqrep|connector|client_proto)\.py)",
    ),
    ("response streaming back (StreamResponse)", r"\(aiohttp/(web_response|http_writer)\.py"),
    ("aiohttp server: parse + dispatch", r"\(aiohttp/(web_protocol|web_app|web_urldispatcher|http_parser)\.py"),
)
# py-spy counts a thread-pool worker blocked on its queue as active: not CPU, left out.
_IDLE_LEAF = re.compile(r"^_worker \(concurrent/futures/thread\.py")


def record(pid: int, seconds: int, rate: int, out: Path) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    # Blocking (the default): --nonblocking tears coroutine stacks into nonsense on 3.11.
    argv = [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate)]
    subprocess.run(
        [*argv, "-f", "raw", "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )


def parse(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def _func(frame: str) -> str:
    """'name (file:line)' -> 'name (file)'."""
    return re.sub(r":\d+\)$", ")", frame)


def summarise(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    group_counts: collections.Counter[str] = collections.Counter()
    patterns = [(name, re.compile(rx)) for name, rx in GROUPS]
    total = 0
    for frames, n in stacks:
        py_frames = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
        if not py_frames or _IDLE_LEAF.match(py_frames[-1]):
            continue
        total += n
        self_counts[_func(py_frames[-1])] += n
        for func in {_func(f) for f in py_frames}:
            incl_counts[func] += n
        group = next(
            (name for name, rx in patterns if any(rx.search(f) for f in py_frames)), "other (event loop, socket I/O)"
        )
        group_counts[group] += n
    if not total:
        return "no samples"
    names = [name for name, _ in GROUPS] + ["other (event loop, socket I/O)"]
    lines = [f"{total} samples", "", "| group (each sample counted once) | % of samples |", "|---|---:|"]
    lines += [f"| {name} | {group_counts[name] / total * 100:.1f} |" for name in names]
    lines += ["", "| function (self) | % |", "|---|---:|"]
    lines += [f"| `{f}` | {n / total * 100:.1f} |" for f, n in self_counts.most_common(top)]
    lines += ["", "| function (inclusive) | % |", "|---|---:|"]
    lines += [f"| `{f}` | {n / total * 100:.1f} |" for f, n in incl_counts.most_common(top + 15)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("sign", "verify", "baseline"), default="sign")
    parser.add_argument("--payload", choices=[p.name for p in PAYLOADS], default="GET")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--log-level", default="info", help="the gateway's log_level")
    parser.add_argument("--redis", action="store_true", help="verify route with the Redis replay store")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)
    payload = next(p for p in PAYLOADS if p.name == args.payload)
    workdir = Path(tempfile.mkdtemp(prefix="hmac-bench-prof-"))
    stack = Stack(
        workdir,
        workers=(1,),
        with_baseline=args.target == "baseline",
        log_level=args.log_level,
        redis_for_one_worker=args.redis,
    )
    try:
        stack.start()
        signer = Signer(stack.keyring)
        target = stack.targets[args.target, 1]
        warm = WrkRun(target, payload, workdir, seconds=2, signer=signer, pool_size=40_000)
        warm.start()
        warm.finish()
        run = WrkRun(target, payload, workdir, seconds=args.seconds + 2, signer=signer, pool_size=200_000)
        run.start()
        raw = workdir / "profile.raw"
        record(target.service.pid, args.seconds, args.rate, raw)
        result = run.finish()
        header = (
            f"py-spy on {target.label} ({args.payload}, log_level {args.log_level}"
            f"{', Redis replay store' if args.redis else ''}), {args.seconds} s at "
            f"{args.rate} Hz under wrk: {result.rps:.0f} req/s, {result.cpu_us_per_request:.0f} µs CPU/req"
        )
        summary = header + "\n\n" + summarise(parse(raw))
        if args.raw:
            shutil.copyfile(raw, args.raw)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(summary)
    if args.out:
        args.out.write_text(summary + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
