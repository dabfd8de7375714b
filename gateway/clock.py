"""The injected clock: every time-dependent decision takes one, so tests never sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""Returns the current time as POSIX seconds."""

system_clock: Clock = time.time


def to_rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp; raises ValueError on anything else."""
    if not isinstance(text, str) or "T" not in text:
        raise ValueError("expected an RFC 3339 timestamp such as 2026-01-31T12:00:00Z")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("timestamp needs a time zone (use Z for UTC)")
    return parsed.timestamp()
