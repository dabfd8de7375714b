"""HTTP vocabulary shared by the signing core and the proxy: which fields are hop-by-hop, how
``Connection`` names more of them, and which request paths are canonical enough to route.

Pure: no I/O. Invariants:
- a hop-by-hop field (RFC 9110 §7.6.1) is never covered by a signature and never forwarded;
- a request path is routed and signed only if an upstream cannot read it differently from
  how we matched it (``check_canonical_path``).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import Reason, RequestRejected

# Hop-by-hop fields change on every hop, so a signature never covers them.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Field names listed in Connection (its ``values``) are hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


def check_canonical_path(raw_target: str) -> None:
    """Refuse paths an upstream might read differently from how we route and sign them.

    Routes match raw path prefixes and the upstream receives the raw path byte for byte, so
    anything a normalising upstream would rewrite (dot segments, also with ``;`` parameters as
    in ``..;``, ``//``, encoded ``/``, ``\\`` or NUL, needlessly encoded unreserved characters
    such as ``%67``) could reach a path no route was meant to expose. Such requests are
    answered ``400 non_canonical_path``.
    """
    path = raw_target.partition("?")[0]
    if "%" not in path and "\\" not in path and "//" not in path and "/." not in path and "#" not in raw_target:
        return  # the usual path: none of what check_path_segments looks for can be in it
    check_path_segments(raw_target)


def check_path_segments(raw_target: str) -> None:
    """The full check, segment by segment (``check_canonical_path`` skips it for plain paths)."""
    path = raw_target.partition("?")[0]
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if not segment and index != len(segments) - 1:
            raise RequestRejected(Reason.NON_CANONICAL_PATH, "empty path segment (//)")
        if "\\" in segment or "#" in segment:
            raise RequestRejected(Reason.NON_CANONICAL_PATH, "backslash or '#' in the path")
        # "..;x" is ".." to Tomcat and Spring, which drop ";" parameters before resolving dots.
        if segment.partition(";")[0] in (".", ".."):
            raise RequestRejected(Reason.NON_CANONICAL_PATH, "dot segment in the path")
        position = segment.find("%")
        while position != -1:
            pair = segment[position + 1 : position + 3]
            try:
                char = chr(int(pair, 16))
            except ValueError:
                raise RequestRejected(Reason.NON_CANONICAL_PATH, "malformed percent-encoding") from None
            if char == "\0":
                raise RequestRejected(Reason.NON_CANONICAL_PATH, "encoded NUL (%00) in the path")
            if char in _UNRESERVED or char in "/\\":
                raise RequestRejected(Reason.NON_CANONICAL_PATH, f"needless or unsafe percent-encoding %{pair}")
            position = segment.find("%", position + 3)
    if "#" in raw_target:
        raise RequestRejected(Reason.NON_CANONICAL_PATH, "'#' in the request target")
