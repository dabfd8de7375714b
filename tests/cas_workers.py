"""Read-modify-write loops for the compare-and-swap tests, run in separate processes.

Each worker appends its own entries to the ``writes`` list of a JSON document through a key
source's ``write(expected_version=...)``, re-reading and retrying on ``WriteConflict``. If the
source lost an update, an entry would be missing at the end; if it applied one twice, an entry
would appear twice. Workers are plain module functions so ``spawn`` can import them.
"""

from __future__ import annotations

import json
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from gateway.errors import SourceError, WriteConflict
from gateway.keys.aws import SecretsManagerSource
from gateway.keys.sources import FileSource, KeySource

MAX_ATTEMPTS_PER_WRITE = 500
DEADLINE_SECONDS = 120.0
# spawned workers import boto3 before they meet: on a loaded 2-core machine that alone can take
# most of a minute for eight of them
BARRIER_SECONDS = 180.0


def append_entries(source: KeySource, worker: int, writes: int) -> dict[str, int]:
    conflicts = retried_errors = 0
    started = time.monotonic()
    for n in range(writes):
        entry = f"w{worker}-{n}"
        for _ in range(MAX_ATTEMPTS_PER_WRITE):
            if time.monotonic() - started > DEADLINE_SECONDS:
                raise TimeoutError(f"worker {worker} made no progress in {DEADLINE_SECONDS}s")
            current = source.load()
            document: dict[str, Any] = json.loads(current.data)
            if entry in document["writes"]:  # an earlier attempt with an unknown outcome did land
                break
            document["writes"].append(entry)
            try:
                source.write(json.dumps(document).encode(), expected_version=current.version_id)
                break
            except WriteConflict:
                conflicts += 1
            except SourceError:  # outcome unknown (e.g. a server error): re-read decides
                retried_errors += 1
        else:
            raise AssertionError(f"worker {worker}: entry {entry} never landed")
    return {"conflicts": conflicts, "retried_errors": retried_errors}


def file_worker(
    path: str, seal_key_env: str | None, worker: int, writes: int, barrier: Barrier, results: Queue[Any]
) -> None:
    source = FileSource("ring", Path(path), seal_key_env=seal_key_env)
    barrier.wait(timeout=BARRIER_SECONDS)
    results.put((worker, append_entries(source, worker, writes)))


def secrets_manager_worker(
    endpoint: str, secret_id: str, worker: int, writes: int, barrier: Barrier, results: Queue[Any]
) -> None:
    source = SecretsManagerSource("ring", secret_id, region="us-east-1", endpoint_url=endpoint, max_attempts=1)
    barrier.wait(timeout=BARRIER_SECONDS)
    results.put((worker, append_entries(source, worker, writes)))


def run_workers(target: Any, args: tuple[Any, ...], processes: int, writes: int) -> list[dict[str, int]]:
    """Start ``processes`` spawned workers together; return their counters, or raise if any failed."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, i, writes, barrier, results)) for i in range(processes)]
    for proc in procs:
        proc.start()
    try:
        collected = [results.get(timeout=DEADLINE_SECONDS + 60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    return [counters for _, counters in sorted(collected)]
