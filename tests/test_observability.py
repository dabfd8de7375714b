"""The access line: exactly what ``json.dumps`` gives for the same fields, whatever the client sent."""

from __future__ import annotations

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.observability import AccessLog

# anything a client can put in a path or a claimed key id: quotes, escapes, controls, non-ASCII,
# and lone surrogates (aiohttp decodes header bytes with surrogateescape)
ANY_TEXT = st.text(st.characters() | st.sampled_from(['"', "\\", "\n", "\x00", "\x7f", "é", "\udcc3", "\u2028", "😀"]))


@settings(max_examples=500, deadline=None)
@given(
    path=ANY_TEXT,
    key_id=ANY_TEXT,
    method=ANY_TEXT,
    route=ANY_TEXT,
    status=st.integers(100, 599),
    duration=st.floats(0, 1e6, allow_nan=False).map(lambda d: round(d, 3)),
    level=st.sampled_from(["info", "warning"]),
)
def test_the_access_line_is_the_json_of_its_fields(
    path: str, key_id: str, method: str, route: str, status: int, duration: float, level: str
) -> None:
    sink = io.StringIO()
    log = AccessLog(sink=sink, enabled=True)
    fields = {
        "request_id": "0f8b1c2d",
        "listener": "in",
        "route": route,
        "method": method,
        "path": path,
        "status": status,
        "outcome": "forwarded",
        "reason": "",
        "key_id": key_id,
        "base_sha256": "ab" * 32,
        "duration_ms": duration,
    }
    log.write_request(**fields, level=level)  # type: ignore[arg-type]
    log.flush()
    line = sink.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    ts = doc["ts"]
    assert len(ts) == 24 and ts.endswith("Z")
    expected = {"ts": ts, "level": level, "logger": "gateway.access", "msg": "request", **fields}
    assert line[:-1] == json.dumps(expected, separators=(",", ":"))  # same text, same key order


def _write(log: AccessLog, request_id: str) -> None:
    log.write_request(
        request_id=request_id,
        listener="in",
        route="r",
        method="GET",
        path="/",
        status=200,
        outcome="forwarded",
        reason="",
        key_id="",
        base_sha256="",
        duration_ms=0.5,
    )


def test_lines_are_batched_and_a_disabled_log_writes_nothing() -> None:
    sink = io.StringIO()
    log = AccessLog(sink=sink, enabled=True)
    for i in range(64):  # no event loop here: each line is written at once
        _write(log, str(i))
    assert [json.loads(line)["request_id"] for line in sink.getvalue().splitlines()] == [str(i) for i in range(64)]
    quiet = io.StringIO()
    off = AccessLog(sink=quiet, enabled=False)
    _write(off, "x")
    off.flush()
    assert quiet.getvalue() == ""
