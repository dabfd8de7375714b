"""``verify``: check a captured request against a keyring, as a verify route would, and say
which check failed (the reason code) -- with ``--explain``, what was signed: the RFC 9421
signature base, or a webhook scheme's signed payload.

The captured request is a file (or stdin): an optional request line (``POST /in?a=1 HTTP/1.1``),
header lines, and after a blank line the body (unless ``--body`` names it). Invariants: no key
material is printed; exit 0 when it verifies, ``VERIFY_FAILED`` when a check fails.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from multidict import CIMultiDict

from gateway import exitcodes
from gateway.cli.base import Command, emit_json, load_config
from gateway.cli.sign import add_keyring_arguments, load_keyring, read_input
from gateway.errors import ConfigError, VerificationError
from gateway.signing import registry, rfc9421, slack, standard_webhooks, stripe
from gateway.signing.scheme import RequestView, SignatureFailure, Verified

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request", help="the captured request head (and body), a file or - for stdin")
    parser.add_argument("--body", metavar="FILE", help="the body, when not after the head (a file or -)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--route", metavar="NAME", help="verify as this configured verify route does")
    which.add_argument("--scheme", choices=tuple(registry.SCHEMES), help="this scheme with its default settings")
    add_keyring_arguments(parser)
    parser.add_argument("--method", help="when the capture has no request line")
    parser.add_argument("--target", help="path and query, when the capture has no request line")
    parser.add_argument("--public-scheme", choices=("http", "https"), default="http", help="for @scheme/@target-uri")
    parser.add_argument("--now", type=float, help="verify as of this Unix time (a capture's freshness)")
    parser.add_argument("--explain", action="store_true", help="print the signature base / signed payload")
    parser.add_argument("--json", action="store_true")


def parse_capture(data: bytes) -> tuple[str | None, str | None, CIMultiDict[str], bytes]:
    """(method, target, headers, body) of a captured request; header bytes kept as on the wire."""
    found = [(i, sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    if found:
        end, sep = min(found)
        head, body = data[:end], data[end + len(sep) :]
    else:
        head, body = data, b""
    lines = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
    method = target = None
    first = lines[0].split(" ") if lines else []
    if len(first) == 3 and first[0] in _METHODS and first[2].startswith("HTTP/"):
        method, target = first[0], first[1]
        lines = lines[1:]
    headers: CIMultiDict[str] = CIMultiDict()
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ConfigError([f"captured request, header line {number}: must read 'Name: value'"])
        headers.add(name, value.strip(" \t"))
    return method, target, headers, body


def _scheme_and_settings(args: argparse.Namespace) -> tuple[str, object]:
    if args.route is None:
        scheme = args.scheme or "rfc9421"
        settings: Any = rfc9421.VerifyPolicy() if scheme == "rfc9421" else registry.SCHEMES[scheme].settings_type()
        return scheme, settings
    cfg = load_config(args)
    route = next((r for r in cfg.routes if r.name == args.route and r.mode == "verify"), None)
    if route is None:
        raise ConfigError([f"--route: no verify route named {args.route!r}"])
    if args.keyring is None and args.keyring_file is None:
        args.keyring = route.keyring
    return route.scheme, route.verify_settings


def signed_payload(scheme: str, headers: CIMultiDict[str], body: bytes) -> bytes | None:
    """What a webhook scheme MACs (for --explain); None when the headers do not say."""
    try:
        if scheme == "standard-webhooks":
            msg_id, ts = headers[standard_webhooks.ID_HEADER], headers[standard_webhooks.TIMESTAMP_HEADER]
            return f"{msg_id}.{ts}.".encode("utf-8", "surrogateescape") + body
        if scheme == "stripe":
            t = next(p[2:] for p in headers[stripe.SIGNATURE_HEADER].split(",") if p.startswith("t="))
            return f"{t}.".encode("utf-8", "surrogateescape") + body
        if scheme == "slack":
            return f"v0:{headers[slack.TIMESTAMP_HEADER]}:".encode("utf-8", "surrogateescape") + body
    except (KeyError, StopIteration):
        return None
    return body  # github: the body itself


def run(args: argparse.Namespace) -> int:
    scheme, settings = _scheme_and_settings(args)
    method, target, headers, body = parse_capture(read_input(args.request))
    if args.body is not None:
        body = read_input(args.body)
    method, target = args.method or method or "POST", args.target or target or "/"
    path, q, query = target.partition("?")
    view = RequestView(method, headers.get("Host", ""), path, query if q else None, headers, args.public_scheme)
    keyring = load_keyring(args)
    now = args.now if args.now is not None else time.time()
    verifier = registry.verifier_for(scheme, settings)
    result: dict[str, Any] = {"scheme": scheme, "keyring": keyring.name}
    base: bytes | None = signed_payload(scheme, headers, body) if scheme != "rfc9421" else None
    verified: Verified | None = None
    stage = "headers"
    try:
        pending = verifier.check_headers(view, keyring, now)
        stage = "body"
        verified = pending.check_body(body)
    except VerificationError as exc:
        result |= {"verified": False, "failed_check": stage, "reason": exc.reason.value, "detail": exc.detail}
        if isinstance(exc, SignatureFailure) and exc.signature_base is not None:
            base = exc.signature_base
    if verified is not None:
        result |= {"verified": True, "key_id": verified.key_id, "label": verified.label}
        if verified.base_sha256:
            result["signature_base_sha256"] = verified.base_sha256
    if args.explain and base is not None:
        result["signed"] = base.decode("utf-8", "backslashreplace")
    if args.json:
        emit_json(result)
    else:
        _print_text(result)
    return exitcodes.OK if verified is not None else exitcodes.VERIFY_FAILED


def _print_text(result: dict[str, Any]) -> None:
    if result["verified"]:
        print(f"verified: scheme {result['scheme']}, key {result['key_id']!r}, signature {result['label']!r}")
    else:
        print(f"NOT verified: scheme {result['scheme']}: {result['failed_check']} check failed: {result['reason']}")
        if result["detail"]:
            print(f"  {result['detail']}")
    if "signed" in result:
        label = "signature base" if result["scheme"] == "rfc9421" else "signed payload"
        print(f"--- {label} ---\n{result['signed']}\n---")


COMMAND = Command("verify", "check a captured request; name the failed check", add_arguments, run)
