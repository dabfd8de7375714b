"""Structured logging: one JSON object per line on stderr.

Invariant: log records carry ids, names, reasons and hashes, never key material or MACs.
Fields given through ``extra=`` become top-level JSON fields.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
import time
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

# The access line's strings go through the C escaper json.dumps itself uses (ensure_ascii).
_q = json.encoder.encode_basestring_ascii
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class ParserRefusalFilter(logging.Filter):
    """aiohttp logs a malformed request (client garbage it answers 400 itself) at ERROR with a
    traceback. That is the client's fault, not ours: keep it as one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request refused by the HTTP parser", ()
            record.exc_info = record.exc_text = None
            record.status = exc.code
            record.reason = "bad_request"
        return True


class AccessLog:
    """One JSON line per request, written without the ``logging`` machinery.

    Going through ``logging`` cost ~23 µs per request (LogRecord, formatter, a flushed write per
    line); this builds the same line shape with one ``json.dumps`` and batches the writes: lines
    are flushed when 64 are buffered, within ``flush_after`` seconds, and on ``close()``.
    ``sink`` is injectable (tests read it); by default it is stderr, like every other log line.
    Enabled when the ``gateway.access`` logger is enabled for INFO.
    """

    def __init__(self, sink: Any = None, flush_after: float = 0.05, enabled: bool | None = None) -> None:
        self.sink = sink
        self.flush_after = flush_after
        if enabled is None:
            enabled = logging.getLogger("gateway.access").isEnabledFor(logging.INFO)
        self.enabled = enabled
        self._lines: list[str] = []
        self.dropped = 0  # lines lost to a broken sink
        self._scheduled: Any = None
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write_request(
        self,
        *,
        request_id: str,
        listener: str,
        route: str,
        method: str,
        path: str,
        status: int,
        outcome: str,
        reason: str,
        key_id: str,
        base_sha256: str,
        duration_ms: float,
        level: str = "info",
    ) -> None:
        """One request's line: the JSON ``json.dumps`` would give for these fields in this order
        (compact separators, ASCII), written as one f-string: the line has a fixed shape, and a
        general encoder walking a dict cost twice as much per request."""
        if not self.enabled:
            return
        self._lines.append(
            f'{{"ts":"{self._timestamp()}","level":{_q(level)},"logger":"gateway.access","msg":"request",'
            f'"request_id":{_q(request_id)},"listener":{_q(listener)},"route":{_q(route)},'
            f'"method":{_q(method)},"path":{_q(path)},"status":{int(status)},"outcome":{_q(outcome)},'
            f'"reason":{_q(reason)},"key_id":{_q(key_id)},"base_sha256":{_q(base_sha256)},'
            f'"duration_ms":{float(duration_ms)!r}}}'
        )
        if len(self._lines) >= 64:
            self.flush()
        elif self._scheduled is None:
            try:
                self._scheduled = asyncio.get_running_loop().call_later(self.flush_after, self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        """Write what is buffered. Never raises: a broken log sink must not fail requests (the
        lines are dropped and counted instead, like ``logging`` handlers do)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            sink = self.sink or sys.stderr
            sink.write("\n".join(lines) + "\n")
            sink.flush()
        except (OSError, ValueError):
            self.dropped += len(lines)

    def close(self) -> None:
        self.flush()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by our one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserRefusalFilter) for f in server_log.filters):
        server_log.addFilter(ParserRefusalFilter())


_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class RequestIds:
    """Request ids: a client's well-formed X-Request-Id, else a per-process random prefix plus a
    counter (unique across processes and restarts, and cheaper than a uuid4 per request)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:12]
        self.counter = itertools.count(1)

    def for_request(self, request: web.Request) -> str:
        incoming = request.headers.get("X-Request-Id", "")
        if 0 < len(incoming) <= 128 and all(c in _REQUEST_ID_CHARS for c in incoming):
            return incoming
        return f"{self.prefix}{next(self.counter):08x}"
