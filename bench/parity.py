"""CPU per request of each gateway route against the plain proxy, both loaded at the same time.

    python -m bench.parity [--seconds 3] [--repeats 5] [--payloads "GET,POST 1 KiB"] [--routes sign,verify]

The figure issue 8 judges the verify route by: in each round, the baseline proxy and one gateway
route (1 worker each) are loaded together by two wrk processes; the gateway's CPU µs per request
is divided by the baseline's from the *same* pair. The report gives the median of those ratios
over the rounds, their spread, and the median ΔCPU in µs. Rounds rotate the order of the cells.

This is the quick A/B tool for one cell set (``bench.run`` measures everything, and is what
the closing figures come from). Same processes, same request pools, same bounds as ``bench.run``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import PAYLOADS, Signer, Stack
from bench.run import Bench, Record, Settings, _rotate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--payloads", default="GET,POST 1 KiB")
    parser.add_argument("--routes", default="sign,verify")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if not common.wrk_available():
        sys.exit("bench: wrk is required (apt-get install wrk)")
    payloads = [p for p in PAYLOADS if p.name in args.payloads.split(",")]
    routes = args.routes.split(",")
    settings = Settings(args.seconds, args.repeats, args.connections, 1.0, 0.3, (1,), args.log_level, False)
    workdir = Path(tempfile.mkdtemp(prefix="hmac-parity-"))
    stack = Stack(workdir, workers=(1,), log_level=args.log_level)
    started = time.monotonic()
    ratios: dict[tuple[str, str], list[float]] = {}
    deltas: dict[tuple[str, str], list[float]] = {}
    try:
        stack.start()
        bench = Bench(stack, settings, workdir, Signer(stack.keyring), log=lambda _msg: None)
        cells = [(p, r) for p in payloads for r in routes]
        for payload, route in cells:  # warm-up: fills the pool-size estimate and the caches
            for kind in ("baseline", route):
                run = bench.wrk(kind, 1, payload, seconds=1)
                run.start()
                run.finish()
        for rnd in range(args.repeats):
            for payload, route in _rotate(cells, rnd):
                runs = [bench.wrk("baseline", 1, payload), bench.wrk(route, 1, payload)]
                for run in runs:
                    run.start()
                base, gate = (run.finish() for run in runs)
                for kind, result in (("baseline", base), (route, gate)):
                    bench.note(Record("concurrent", rnd, 1, kind, result))
                if not (base.valid and gate.valid):
                    print(f"  r{rnd} {payload.name} {route}: INVALID run, skipped", flush=True)
                    continue
                ratio = gate.cpu_us_per_request / base.cpu_us_per_request
                delta = gate.cpu_us_per_request - base.cpu_us_per_request
                ratios.setdefault((payload.name, route), []).append(ratio)
                deltas.setdefault((payload.name, route), []).append(delta)
                print(
                    f"  r{rnd} {payload.name:<11} {route:<6} gateway {gate.cpu_us_per_request:6.1f} "
                    f"baseline {base.cpu_us_per_request:6.1f} µs/req  ratio {ratio:5.3f}  "
                    f"({gate.rps:,.0f} vs {base.rps:,.0f} req/s)",
                    flush=True,
                )
    finally:
        stack.stop()
    print(f"\n{args.repeats} rounds of {args.seconds} s, {time.monotonic() - started:.0f} s in all")
    print("| payload | route | CPU ratio (median) | min to max | ΔCPU µs (median) |")
    print("|---|---|---:|---:|---:|")
    for (payload_name, route), values in ratios.items():
        d = deltas[payload_name, route]
        print(
            f"| {payload_name} | {route} | {statistics.median(values):.3f} | "
            f"{min(values):.3f} to {max(values):.3f} | {statistics.median(d):+.1f} |"
        )


if __name__ == "__main__":
    main()
