"""CPU µs per ``SET key 1 NX PX ttl``: our RESP client next to ``coredis`` (issue 12's rule: use the
library if it comes within ~20 % of ours). Both run the same load in the same process, against
the redis-server on 127.0.0.1:6379: ``--tasks`` concurrent tasks sharing one client, ``--commands``
commands in all, each to a fresh key (so every reply is ``+OK``), CPU measured with
``time.process_time()`` (this process only: the client's cost, not Redis's). Keys expire in 60 s.

    python -m bench.redis_clients [--tasks 64] [--commands 20000] [--rounds 3] [--url redis://127.0.0.1:6379/0]
                                  [--cluster-url redis://127.0.0.1:PORT]

``--cluster-url`` (any node of a Redis Cluster) adds both clients in cluster mode: our
``ClusterClient`` and coredis's ``RedisCluster``.

coredis is not a dependency: ``pip install coredis`` first (the script says so if it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

from gateway.replay.cluster import ClusterClient
from gateway.replay.resp import RedisClient

Send = Callable[[bytes], Awaitable[object]]


async def _load(send: Send, tasks: int, commands: int) -> tuple[float, float]:
    """(CPU µs per command, wall µs per command) for ``commands`` sends spread over ``tasks`` tasks."""
    run = secrets.token_hex(4).encode()
    per_task = commands // tasks

    async def worker(n: int) -> None:
        for i in range(per_task):
            await send(b"bench:redis_clients:%s:%d:%d" % (run, n, i))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(tasks)))
    done = per_task * tasks
    return (time.process_time() - cpu0) / done * 1e6, (time.perf_counter() - wall0) / done * 1e6


async def _ours(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = RedisClient(url, timeout=5.0)

    async def send(key: bytes) -> object:
        return await client.execute(b"SET", key, b"1", b"NX", b"PX", b"60000")

    return send, client.close


async def _ours_cluster(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = ClusterClient(url, timeout=5.0)

    async def send(key: bytes) -> object:
        return await client.execute_keyed(key, b"SET", key, b"1", b"NX", b"PX", b"60000")

    return send, client.close


async def _coredis_cluster(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import coredis  # optional: only this benchmark uses it
    from coredis.tokens import PureToken

    from gateway.replay.address import RedisAddress

    a = RedisAddress.parse(url)
    client: coredis.RedisCluster[bytes] = coredis.RedisCluster(host=a.host, port=a.port, password=a.password)
    entered = await client.__aenter__()

    async def send(key: bytes) -> object:
        return await entered.set(key, b"1", condition=PureToken.NX, px=60000)

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return send, close


async def _coredis(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import coredis  # optional: only this benchmark uses it
    from coredis.tokens import PureToken

    from gateway.replay.address import RedisAddress

    a = RedisAddress.parse(url)
    client: coredis.Redis[bytes] = coredis.Redis(host=a.host, port=a.port, db=a.db, password=a.password)
    entered = await client.__aenter__()

    async def send(key: bytes) -> object:
        return await entered.set(key, b"1", condition=PureToken.NX, px=60000)

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return send, close


async def _measure(name: str, url: str, tasks: int, commands: int, rounds: int) -> dict[str, float]:
    opener = {"ours": _ours, "coredis": _coredis, "ours-cluster": _ours_cluster, "coredis-cluster": _coredis_cluster}[
        name
    ]
    send, close = await opener(url)
    try:
        await _load(send, tasks, min(commands, 2000))  # warm-up: connect, fill caches
        results = [await _load(send, tasks, commands) for _ in range(rounds)]
    finally:
        await close()
    return {
        "cpu_us": statistics.median(r[0] for r in results),
        "wall_us": statistics.median(r[1] for r in results),
    }


async def main_async(args: argparse.Namespace) -> None:
    try:
        import coredis  # noqa: F401
    except ImportError:
        raise SystemExit("coredis is not installed: pip install coredis") from None
    rows: dict[str, dict[str, float]] = {}
    names = ["ours", "coredis"] + (["ours-cluster", "coredis-cluster"] if args.cluster_url else [])
    for name in names * 2:  # interleaved: every client sees the same machine load
        url = args.cluster_url if name.endswith("-cluster") else args.url
        result = await _measure(name, url, args.tasks, args.commands, args.rounds)
        previous = rows.get(name)
        rows[name] = result if previous is None or result["cpu_us"] < previous["cpu_us"] else previous
    ours = rows["ours"]["cpu_us"]
    print(f"SET NX PX, {args.tasks} concurrent tasks, {args.commands} commands x {args.rounds} rounds (best of 2)")
    print(f"{'client':<16} {'CPU µs/cmd':>11} {'wall µs/cmd':>12} {'CPU vs ours':>12}")
    for name, r in rows.items():
        print(f"{name:<16} {r['cpu_us']:>11.1f} {r['wall_us']:>12.1f} {r['cpu_us'] / ours:>11.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--cluster-url", default="", help="any node of a Redis Cluster: adds cluster-mode rows")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
