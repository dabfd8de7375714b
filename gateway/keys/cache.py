"""The per-process keyring cache: the only thing a request reads keys from.

Invariants:
- a request never waits on the source: handlers read ``cache.keyring`` (a snapshot) only;
- concurrent refreshes collapse into one source call (single flight);
- a failed or invalid load never replaces a good snapshot: the last good keyring keeps
  serving, failures back off exponentially up to a cap, and staleness is reported;
- an unknown key id may trigger at most one early refresh per ``early_refresh_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from gateway.clock import Clock, system_clock, to_rfc3339
from gateway.errors import KeyringError
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring
from gateway.keys.settings import DEFAULT_ENCODING, RefreshPolicy
from gateway.keys.sources import KeySource

__all__ = ["KeyringCache", "RefreshPolicy"]

log = logging.getLogger("gateway.keys")


class KeyringCache:
    def __init__(
        self,
        name: str,
        source: KeySource,
        *,
        encoding: str = DEFAULT_ENCODING,
        policy: RefreshPolicy | None = None,
        clock: Clock = system_clock,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.source = source
        self.encoding = encoding
        self.policy = policy or RefreshPolicy()
        self.clock = clock
        self._rand = rand
        self.keyring: Keyring | None = None
        self.loaded_at: float | None = None  # last successful load (or unchanged check)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failing_since: float | None = None  # first failure since the last success
        self.failures = 0
        self.loads = 0
        self._inflight: asyncio.Future[bool] | None = None
        self._last_early: float | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- refreshing ---------------------------------------------------------------------

    def _load(self) -> Keyring:
        document = self.source.load()
        current = self.keyring
        if current is not None and document.version_id and document.version_id == current.version_id:
            return current
        return parse_keyring(self.name, document.data, encoding=self.encoding, version_id=document.version_id)

    async def refresh(self) -> bool:
        """Load now (single flight). True on success; failures are recorded, never raised."""
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = asyncio.ensure_future(self._refresh_once())
            # Cleared when the load ends, whoever is (or is no longer) waiting for it.
            inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(inflight)

    def _clear_inflight(self, done: asyncio.Future[bool]) -> None:
        if self._inflight is done:
            self._inflight = None

    async def _refresh_once(self) -> bool:
        try:
            keyring = await asyncio.to_thread(self._load)
        except KeyringError as exc:
            return self._failed(str(exc))
        except Exception as exc:  # a source bug or library surprise: report its type, keep serving
            return self._failed(f"unexpected {type(exc).__name__} from {self.source.description}")
        finally:
            self.loads += 1
        previous = self.keyring
        self.keyring = keyring
        self.loaded_at = self.clock()
        if self.failures:
            log.info("keyring recovered", extra={"keyring": self.name, "after_failures": self.failures})
        self.failures = 0
        self.last_error = None
        self.failing_since = None
        if previous is None or previous.version_id != keyring.version_id:
            log.info(
                "keyring loaded",
                extra={
                    "keyring": self.name,
                    "source": self.source.description,
                    "format": keyring.format,
                    "keys": [k.id for k in keyring.keys],
                    "signing_key": keyring.signing_key_id,
                },
            )
        return True

    def _failed(self, message: str) -> bool:
        self.failures += 1
        self.last_error = message
        self.last_error_at = self.clock()
        if self.failing_since is None:
            self.failing_since = self.last_error_at
        log.warning(
            "keyring refresh failed",
            extra={
                "keyring": self.name,
                "error": message,
                "failures": self.failures,
                "serving_last_good": self.keyring is not None,
            },
        )
        return False

    def next_delay(self) -> float:
        p = self.policy
        if self.failures:
            base = min(p.backoff_cap, p.backoff_initial * 2 ** (self.failures - 1))
        else:
            base = p.interval
        return max(0.05, float(base) * (1 + p.jitter * (2 * self._rand() - 1)))

    async def run(self) -> None:
        """Background refresh loop; cancel it to stop."""
        while True:
            await asyncio.sleep(self.next_delay())
            await self.refresh()

    def request_early_refresh(self) -> bool:
        """Refresh soon because a key id was unknown; rate limited. True if one was started."""
        now = self.clock()
        if self._last_early is not None and now - self._last_early < self.policy.early_refresh_interval:
            return False
        self._last_early = now
        task = asyncio.ensure_future(self.refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    # -- reporting ----------------------------------------------------------------------

    def age(self, now: float) -> float | None:
        return None if self.loaded_at is None else max(0.0, now - self.loaded_at)

    def is_ready(self, now: float) -> bool:
        age = self.age(now)
        return age is not None and age <= self.policy.max_staleness

    def status(self, now: float) -> dict[str, Any]:
        age = self.age(now)
        keyring = self.keyring
        return {
            "loaded": keyring is not None,
            "ready": self.is_ready(now),
            "source": self.source.description,
            "refreshing": self._inflight is not None,
            "format": keyring.format if keyring else None,
            "signing_key": keyring.signing_key_id if keyring else None,
            "age_seconds": None if age is None else round(age, 3),
            # stale: refreshes are failing and we serve the last good keyring; ready turns false
            # only once that keyring is older than max_staleness
            "stale": self.failing_since is not None and keyring is not None,
            "stale_since": to_rfc3339(self.failing_since) if self.failing_since is not None else None,
            "max_staleness_seconds": self.policy.max_staleness,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }
