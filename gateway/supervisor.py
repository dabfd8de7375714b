"""``serve --workers N``: N processes on the same ports (SO_REUSEPORT), supervised.

Invariants:
- a worker that dies (the OOM killer's ``kill -9``, a crash) is started again after a
  back-off; the others keep serving, so one death never takes the gateway down;
- a crash loop stops the gateway: more than ``CRASH_LIMIT`` deaths within ``CRASH_WINDOW``
  seconds, or a worker that fails its start-up (config, keyring, bind or replay-store error:
  exit codes 2-5, which a restart cannot fix) stops every worker and exits with a failure code;
- SIGTERM/SIGINT go to every worker, each drains on its own, and nothing is restarted after;
- every worker writes its metrics into one directory (``PROMETHEUS_MULTIPROC_DIR``), so a
  scrape reaching any worker reports them all; a dead worker's live gauges are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from gateway import exitcodes

log = logging.getLogger("gateway.supervisor")

CRASH_LIMIT = 5  # deaths ...
CRASH_WINDOW = 60.0  # ... within this many seconds stop the gateway
BACKOFF_INITIAL = 0.5
BACKOFF_CAP = 30.0
STARTUP_FAILURES = frozenset(
    {exitcodes.CONFIG_ERROR, exitcodes.KEYRING_ERROR, exitcodes.BIND_ERROR, exitcodes.REPLAY_STORE_ERROR}
)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


Worker = Callable[[str, bool], None]
"""A worker process's entry point: (config path, restarted?). It must be importable by name: the
workers are spawned (a fresh interpreter), so they see PROMETHEUS_MULTIPROC_DIR from their start."""


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """The operator's ``PROMETHEUS_MULTIPROC_DIR`` (emptied of a previous run's files), else a
    private temporary one, removed at exit."""
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="hmac-gateway-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


class Supervisor:
    def __init__(
        self,
        target: Worker,
        config_path: str,
        workers: int,
        *,
        crash_limit: int = CRASH_LIMIT,
        crash_window: float = CRASH_WINDOW,
        backoff_initial: float = BACKOFF_INITIAL,
    ) -> None:
        self.target = target
        self.crash_limit = crash_limit
        self.crash_window = crash_window
        self.backoff_initial = backoff_initial
        self.config_path = config_path
        self.workers = workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = False
        self.deaths: deque[float] = deque()
        self.backoff = backoff_initial
        self.restarts = 0
        self.code = exitcodes.OK

    def start(self, restarted: bool = False) -> BaseProcess:
        proc = self.ctx.Process(target=self.target, args=(self.config_path, restarted), name="hmac-gateway-worker")
        proc.start()
        self.procs.append(proc)
        return proc

    def stop_all(self, _signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: each worker drains on its own

    def run(self, metrics_dir: Path) -> int:
        signal.signal(signal.SIGTERM, self.stop_all)
        signal.signal(signal.SIGINT, self.stop_all)
        for _ in range(self.workers):
            self.start()
        while self.procs:
            for proc in list(self.procs):
                proc.join(timeout=0.2)
                if proc.exitcode is None:
                    continue
                self.procs.remove(proc)
                self._mark_dead(proc, metrics_dir)
                self._after_exit(proc.exitcode)
        return self.code

    @staticmethod
    def _mark_dead(proc: BaseProcess, metrics_dir: Path) -> None:
        if proc.pid is not None:
            multiprocess.mark_process_dead(proc.pid, str(metrics_dir))  # type: ignore[no-untyped-call]

    def _after_exit(self, exitcode: int) -> None:
        # A worker still starting up when we forwarded SIGTERM dies of the signal itself:
        # that is the stop we asked for, not a failure.
        if self.stopping:
            if exitcode not in (0, -signal.SIGTERM) and self.code == exitcodes.OK:
                self.code = exitcode if exitcode > 0 else exitcodes.FAILURE
            return
        if exitcode in STARTUP_FAILURES or exitcode == 0:
            # Start-up failures repeat on every restart; a clean exit nobody asked for is odd
            # enough not to paper over. Either way: stop everything, say why.
            log.error("worker exited; stopping the gateway", extra={"exit_code": exitcode})
            self.code = exitcode or exitcodes.FAILURE
            self.stop_all()
            return
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > self.crash_window:
            self.deaths.popleft()
        if len(self.deaths) > self.crash_limit:
            log.error(
                "workers keep dying; stopping the gateway",
                extra={"deaths": len(self.deaths), "window_seconds": self.crash_window, "exit_code": exitcode},
            )
            self.code = exitcodes.FAILURE
            self.stop_all()
            return
        delay = self.backoff if len(self.deaths) > 1 else 0.0  # the first death restarts at once
        self.backoff = min(BACKOFF_CAP, self.backoff * 2) if len(self.deaths) > 1 else self.backoff_initial
        log.warning(
            "worker died; starting another", extra={"exit_code": exitcode, "restart_in_seconds": round(delay, 2)}
        )
        self._sleep_unless_stopping(delay)
        if not self.stopping:
            self.restarts += 1
            self.start(restarted=True)

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))


def serve_workers(target: Worker, config_path: str, workers: int) -> int:
    """Run and supervise ``workers`` processes; returns the gateway's exit code."""
    with metrics_directory() as metrics_dir:
        return Supervisor(target, config_path, workers).run(metrics_dir)
