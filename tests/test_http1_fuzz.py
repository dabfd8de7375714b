"""Differential fuzzing of the upstream client's response handling (gateway/proxy/http1.py).

Random answers (status lines, Content-Length / Transfer-Encoding combinations, duplicate
lengths, chunk sizes and extensions, trailers, early close, interim 1xx, 204/304 with bodies,
obs-fold, control characters, over-long heads, stray bytes after the answer) are written in
one piece by a raw asyncio server on 127.0.0.1. For each, the client's verdict (the body it
relays, or 502 ``upstream_unavailable``) must equal a verdict computed here independently: a
fresh llhttp parser (``httptools``) fed the same bytes, plus the few rules the client adds on
top of llhttp (HTTP/1.x only, status 100-599, no 101, no control characters in the reason,
UTF-8 values, no 204 announcing a body, the head limits). Then the pool is asked for a second
answer: the connection must have been reused exactly when the first answer was whole,
keep-alive, and followed by nothing, and the second answer is never a leftover of the first.

Seeded and bounded: ``HTTP1_FUZZ_CASES`` cases (default 300, a few seconds) from seed
``HTTP1_FUZZ_SEED`` (default 9). A long run: ``HTTP1_FUZZ_CASES=20000 HTTP1_FUZZ_SEED=$RANDOM
pytest tests/test_http1_fuzz.py``; a failure names the seed and case to replay.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field

import httptools

from gateway.errors import Reason
from gateway.proxy.http1_head import HeadLimits, UpstreamError, request_head
from gateway.proxy.pool import ConnectionPool

CASES = int(os.environ.get("HTTP1_FUZZ_CASES", "300"))
SEED = int(os.environ.get("HTTP1_FUZZ_SEED", "9"))
LIMITS = HeadLimits()
NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


# -- what a random upstream says --------------------------------------------------------------


def _status_line(rng: random.Random) -> bytes:
    version = rng.choice([b"1.1"] * 16 + [b"1.0", b"2.0", b"0.9", b"1.2"])
    status = rng.choice([b"200"] * 10 + [b"201", b"204", b"304", b"404", b"500", b"101", b"099", b"600", b"199", b"20"])
    reason = rng.choice(
        [b"OK"] * 12 + [b"", b"Fine Thanks", b"O\x01K", b"O\x1bK", b"caf\xe9", b"\tTab", b"x" * 600, b"O\x7fK"]
    )
    sep = rng.choice([b"\r\n"] * 20 + [b"\n"])
    return b"HTTP/" + version + b" " + status + (b" " + reason if reason or rng.random() < 0.5 else b"") + sep


def _field(rng: random.Random) -> bytes:
    if rng.random() < 0.6:
        return rng.choice([b"X-Plain: value\r\n", b"Content-Type: text/plain\r\n", b"Connection: keep-alive\r\n"])
    return rng.choice(
        [
            b"X-Plain: value\r\n",
            b"Content-Type: text/plain\r\n",
            b"X-Fold: a\r\n folded\r\n",
            b"X-Ctl: a\x01b\r\n",
            b"X-Nul: a\x00b\r\n",
            b"X-Tab: a\tb\r\n",
            b"X-Latin: caf\xe9\r\n",
            b"X-Utf8: caf\xc3\xa9\r\n",
            b"X-Bare: lf\n",
            b"X-Space : before colon\r\n",
            b"Connection: close\r\n",
            b"Connection: keep-alive\r\n",
            b"Connection: Keep-Alive, Close\r\n",
            b"Keep-Alive: timeout=5\r\n",
        ]
    )


def _chunked(rng: random.Random, body: bytes) -> bytes:
    out = []
    rest = body
    while rest:
        size = rng.randint(1, max(1, len(rest)))
        piece, rest = rest[:size], rest[size:]
        line = (b"%x" if rng.random() < 0.7 else b"%X") % len(piece)
        roll = rng.random()
        if roll < 0.1:
            line += b";ext=1"
        elif roll < 0.13:
            line += b';q="unterminated'
        elif roll < 0.16:
            line = b"FFFFFFFFFFFFFFFFFF"
        elif roll < 0.19:
            line += b" "
        out.append(line + (b"\n" if rng.random() < 0.03 else b"\r\n") + piece + b"\r\n")
    trailer = rng.choice([b""] * 6 + [b"X-Trailer: t\r\n", b"X-Bad: \x01\r\n"])
    return b"".join(out) + b"0\r\n" + trailer + b"\r\n"


@dataclass
class Case:
    index: int
    method: str
    data: bytes
    close: bool  # the server closes its end right after writing ``data``


def make_case(rng: random.Random, index: int) -> Case:
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 100, 3000])))
    parts: list[bytes] = []
    for _ in range(rng.choice([0] * 6 + [1, 2])):
        interim = rng.choice([b"100 Continue", b"102 Processing", b"103 Early Hints"])
        parts.append(b"HTTP/1.1 " + interim + b"\r\n" + (b"Link: </a>\r\n" if rng.random() < 0.5 else b"") + b"\r\n")
    parts.append(_status_line(rng))
    fields = [_field(rng) for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3]))]
    framing = rng.choice(["cl"] * 6 + ["chunked"] * 4 + ["close", "cl+te", "dup-cl", "bad-cl", "te-not-last"])
    if framing in ("cl", "cl+te", "dup-cl"):
        declared = len(body) + rng.choice([0] * 8 + [-1, 1])
        fields.append(b"Content-Length: %d\r\n" % max(declared, 0))
        if framing == "dup-cl":
            fields.append(b"Content-Length: %d\r\n" % rng.choice([max(declared, 0), len(body) + 7]))
    if framing == "bad-cl":
        fields.append(rng.choice([b"Content-Length: 1, 1\r\n", b"Content-Length: +1\r\n", b"Content-Length: x\r\n"]))
    if framing in ("chunked", "cl+te"):
        fields.append(rng.choice([b"Transfer-Encoding: chunked\r\n"] * 3 + [b"Transfer-Encoding: gzip, chunked\r\n"]))
    if framing == "te-not-last":
        fields.append(b"Transfer-Encoding: chunked, identity\r\n")
    big = rng.random()
    if big < 0.02:
        fields += [b"X-N%d: v\r\n" % i for i in range(LIMITS.max_headers + rng.choice([-5, 0, 5]))]
    elif big < 0.04:
        fields.append(b"X-Big: " + b"v" * (LIMITS.max_head_bytes + rng.choice([-200, 10, 5000])) + b"\r\n")
    rng.shuffle(fields)
    parts += fields
    parts.append(b"\r\n")
    parts.append(_chunked(rng, body) if framing in ("chunked", "cl+te") else body)
    close = framing in ("close", "te-not-last") or rng.random() < 0.1
    after = rng.choice([b""] * 12 + [NEXT, b"GARBAGE", b"\r\n", b"HTTP/1.1 200 OK\r\n"])
    if not close:
        parts.append(after)
    method = "HEAD" if rng.random() < 0.08 else "GET"
    return Case(index, method, b"".join(parts), close)


# -- the verdict, computed independently --------------------------------------------------------


@dataclass
class Message:
    status: int = 0
    version: str = ""
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    head_done: bool = False
    head_fields: int = 0  # fields before the body; trailers come after
    done: bool = False


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.messages.append(Message())

    def on_status(self, status: bytes) -> None:
        self.messages[-1].reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        m = self.messages[-1]
        m.status, m.version, m.head_done = self.parser.get_status_code(), self.parser.get_http_version(), True
        m.head_fields = len(m.headers)

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body.append(body)

    def on_message_complete(self) -> None:
        self.messages[-1].done = True


@dataclass(frozen=True)
class Verdict:
    body: bytes | None  # None: 502
    reusable: bool = False


def _bad_head(m: Message) -> bool:
    """The rules the client adds to llhttp's for every head (interim or final)."""
    ctl = any((b < 0x20 and b != 0x09) or b == 0x7F for b in m.reason)
    return m.version not in ("1.0", "1.1") or not 100 <= m.status <= 599 or m.status == 101 or ctl


def expected(case: Case) -> Verdict:
    rec = Recorder()
    data = case.data
    error = False
    try:
        rec.parser.feed_data(data[: LIMITS.max_head_bytes])
        final = any(m.head_done and not (100 <= m.status <= 199 and m.status != 101) for m in rec.messages)
        if not final and len(data) > LIMITS.max_head_bytes:
            return Verdict(None)  # no final head within the byte limit
        rec.parser.feed_data(data[LIMITS.max_head_bytes :])
    except httptools.HttpParserError:
        error = True
    for i, m in enumerate(rec.messages):
        # A HEAD answer ends with its head; otherwise trailers count with the final head's fields.
        fields = m.head_fields if case.method == "HEAD" and m.head_done else len(m.headers)
        if len(m.reason) > LIMITS.max_reason_bytes or fields > LIMITS.max_headers:
            return Verdict(None)
        if not m.head_done:
            return Verdict(None)  # cut or malformed head
        if _bad_head(m):
            return Verdict(None)
        if 100 <= m.status < 200:
            if m.body:
                return Verdict(None)  # llhttp reads a body for some 1xx; RFC 9112 says there is none
            continue
        try:
            texts = [(n.decode("ascii"), v.decode("utf-8")) for n, v in m.headers]
        except UnicodeDecodeError:
            return Verdict(None)
        lower = {n.lower(): v for n, v in texts}
        if m.status == 204 and ("transfer-encoding" in lower or lower.get("content-length", "0") != "0"):
            return Verdict(None)
        if case.method == "HEAD":
            return Verdict(b"")
        later = i + 1 < len(rec.messages)
        if not m.done:
            chunked = lower.get("transfer-encoding", "").rsplit(",", 1)[-1].strip().lower() == "chunked"
            close_delimited = "content-length" not in lower and not chunked and m.status not in (204, 304)
            return Verdict(b"".join(m.body) if close_delimited and case.close and not error else None)
        tokens = {t.strip().lower() for n, v in texts if n.lower() == "connection" for t in v.split(",")}
        reusable = m.version == "1.1" and "close" not in tokens and not later and not error and not case.close
        return Verdict(b"".join(m.body), reusable)
    return Verdict(None)  # no message at all, or only interim ones


# -- the run ------------------------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> bool:
    try:
        await reader.readuntil(b"\r\n\r\n")  # the client sends GET/HEAD only: no body
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    return True


async def test_client_verdicts_match_llhttp_and_the_pool_never_reuses_a_bad_connection() -> None:
    rng = random.Random(SEED)
    current: list[Case] = []
    served = [False]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await _read_request(reader):
                if served[0]:
                    writer.write(NEXT)
                else:
                    served[0] = True
                    writer.write(current[0].data)  # one write: stray bytes arrive with the answer
                    if current[0].close:
                        await writer.drain()
                        break
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mismatches: list[str] = []
    try:
        for index in range(CASES):
            case = make_case(rng, index)
            want = expected(case)
            if want.body is None and not case.close:
                case.close = True  # a cut answer must end, or the client would wait for read_timeout
                want = expected(case)
            current[:] = [case]
            served[0] = False
            pool = ConnectionPool("127.0.0.1", port, connect_timeout=2.0, read_timeout=2.0, head_limits=LIMITS)
            got: bytes | None
            try:
                conn = await pool.acquire()
                conn.send(case.method, request_head(case.method, "/", "u", [], 0), b"")
                await conn.read_head()
                got = await conn.read_all()
                pool.release(conn)
            except UpstreamError as exc:
                assert exc.reason is Reason.UPSTREAM_UNAVAILABLE, f"seed {SEED} case {index}: {exc.detail}"
                got = None
            again = await _second(pool)
            reused = pool.connections_made == 1  # a retried reuse made a second one
            await pool.close()
            if got != want.body or again != b"next" or (got is not None and reused != want.reusable):
                mismatches.append(
                    f"seed {SEED} case {index} {case.method} close={case.close} {case.data[:300]!r}: "
                    f"got {got!r:.60} reused={reused} then {again!r}; want {want.body!r:.60} reuse={want.reusable}"
                )
    finally:
        server.close()
        await server.wait_closed()
    assert not mismatches, "\n".join(mismatches[:10])


async def _second(pool: ConnectionPool) -> bytes:
    """The next answer, with forward()'s one retry of a kept-alive connection found closed."""
    head = request_head("GET", "/", "u", [], 0)
    try:
        conn = await pool.acquire()
        conn.send("GET", head, b"")
        try:
            await conn.read_head()
        except UpstreamError:
            if not conn.reused or conn.got_data:
                raise
            conn = await pool.acquire(fresh=True)  # the upstream's close raced our reuse
            conn.send("GET", head, b"")
            await conn.read_head()
        data = await conn.read_all()
    except UpstreamError as exc:
        return f"<{exc.detail}>".encode()
    pool.release(conn)
    return data


def test_the_generator_reaches_every_verdict() -> None:
    """The fuzzer is only worth its time if it produces relayed, refused, and reused answers."""
    rng = random.Random(SEED)
    verdicts = [expected(make_case(rng, i)) for i in range(CASES)]
    assert sum(v.body is None for v in verdicts) > CASES // 10
    assert sum(v.reusable for v in verdicts) > CASES // 20
    assert sum(v.body is not None and not v.reusable for v in verdicts) > CASES // 20
