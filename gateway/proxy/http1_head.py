"""What an upstream's response head may be before we relay it, and the request head we send.

llhttp (``httptools``) decides the framing; this module adds what llhttp leaves to its caller.

Invariants:
- a head is relayed only if it is HTTP/1.0 or 1.1 with a status of 100 to 599, a reason phrase
  of visible characters (RFC 9112 §4: HTAB, SP, VCHAR, obs-text), ASCII names and UTF-8 values;
- it is bounded: at most ``max_headers`` fields, ``max_head_bytes`` bytes for the whole head
  (status line, fields, interim 1xx heads before it) and ``max_reason_bytes`` of reason phrase;
  the caller stops reading as soon as one is crossed (memory stays flat whatever is sent);
- a 204 that announces a body (``Transfer-Encoding`` or a non-zero ``Content-Length``) is
  refused: the upstream believes it sends bytes that we would read as its next answer;
- every refusal is an ``UpstreamError`` (502 ``upstream_unavailable``) naming no internal state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import Reason

MAX_RESPONSE_HEADERS = 100  # field lines in one response head (interim heads count apart)
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # the whole head, interim 1xx heads included
MAX_REASON_BYTES = 512  # the reason phrase; RFC 9112 §4 lets a client ignore it anyway

# RFC 9112 §4 reason-phrase: HTAB / SP / VCHAR / obs-text. llhttp lets other controls through.
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class UpstreamError(Exception):
    """The upstream could not be reached, did not answer in time, or answered nonsense."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def unavailable(detail: str) -> UpstreamError:
    return UpstreamError(Reason.UPSTREAM_UNAVAILABLE, detail)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_headers: int = MAX_RESPONSE_HEADERS
    max_head_bytes: int = MAX_RESPONSE_HEAD_BYTES
    max_reason_bytes: int = MAX_REASON_BYTES


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None


@dataclass(frozen=True, slots=True)
class FinalHead:
    """A final (non-1xx) head and what it means for the body and the connection."""

    head: ResponseHead
    close_delimited: bool  # the body runs to the end of the connection
    keep_alive: bool


def check_status_line(status: int, version: str, reason: bytes) -> None:
    """For every head, interim or final; ``UpstreamError`` if it is not one we relay."""
    if version not in ("1.1", "1.0"):
        raise unavailable("the upstream does not answer in HTTP/1.x")
    if not 100 <= status <= 599:
        raise unavailable("the upstream sent a status code outside 100-599")
    if status == 101:
        raise unavailable("the upstream switched protocols, which was not asked for")
    if _BAD_REASON.search(reason):
        raise unavailable("the upstream sent control characters in its status line")


def final_head(
    status: int, version: str, reason: bytes, raw_headers: list[tuple[bytes, bytes]], *, head_only: bool
) -> FinalHead:
    """The final head, decoded and checked (``check_status_line`` must have passed)."""
    length: int | None = None
    chunked = False
    encoded = False
    connection_close = False
    headers: list[tuple[str, str]] = []
    try:
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("ascii")
            value = raw_value.decode("utf-8")
            lower = name.lower()
            if lower == "content-length":
                length = int(value)  # llhttp already refused duplicates, lists and signs
            elif lower == "transfer-encoding":
                # RFC 9112 §6.3: chunked framing only when chunked is the *last* coding (llhttp
                # agrees); otherwise the body runs to the end of the connection.
                encoded = True
                chunked = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
            elif lower == "connection":
                connection_close = connection_close or "close" in value.lower()
            headers.append((name, value))
    except (UnicodeDecodeError, ValueError):
        raise unavailable("the upstream sent a response header we cannot relay (not UTF-8)") from None
    if status == 204 and (encoded or length):
        raise unavailable("the upstream announced a body in a 204 answer")
    bodyless = head_only or status in (204, 304)
    return FinalHead(
        ResponseHead(status, reason.decode("latin-1"), headers, length),
        close_delimited=not bodyless and length is None and not chunked,
        keep_alive=version == "1.1" and not connection_close,
    )


def request_head(method: str, target: str, authority: str, headers: list[tuple[str, str]], body_length: int) -> bytes:
    """The request line and header block, bytes as the client sent them (surrogateescape).

    Raises ``ValueError`` on CR, LF or NUL in any part: it would split the request.
    """
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body_length or method not in _BODYLESS_METHODS:
        lines.append(f"Content-Length: {body_length}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # Exactly one LF per line and no CR or NUL elsewhere: nothing can end a line early.
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1 or "\0" in text:
        raise ValueError("CR, LF or NUL in the request head")
    return text.encode("utf-8", "surrogateescape")


_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
