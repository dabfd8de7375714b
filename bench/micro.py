"""Micro-benchmark: per-request µs of our RFC 9421 sign and verify next to ``http-message-signatures``.

Both sides do the same work on the same realistic request (POST with authority, path, query,
Content-Type and a JSON body): sign = build Content-Digest + signature base + HMAC + header
values; verify = parse the signature headers, check the parameters and the Content-Digest
against the body, rebuild the base and compare the MAC. Each side's output is first checked to
verify with the *other* implementation, so both really produce the same signature.

    python -m bench.micro [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
import statistics
import time
import timeit
import types
from collections.abc import Callable
from typing import Any

from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver, algorithms
from multidict import CIMultiDict

from gateway import metrics
from gateway.keys.formats import parse_keyring
from gateway.signing import rfc9421
from gateway.signing.digest import content_digest

METHOD = "POST"
AUTHORITY = "api.example.com"
PATH = "/v1/orders"
QUERY = "id=42&expand=items"
URL = f"https://{AUTHORITY}{PATH}?{QUERY}"
BODY = json.dumps({"order": {"id": 42, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}}).encode()
BASE_HEADERS = (("Content-Type", "application/json"), ("Content-Length", str(len(BODY))), ("User-Agent", "svc/1.0"))
COMPONENTS = ("@method", "@authority", "@path", "@query", "content-digest", "content-type")
KEY_ID = "key-v1"
TAG = "hmac-gateway"

SECRET = secrets.token_hex(32)
KEYRING = parse_keyring("micro", json.dumps({KEY_ID: SECRET}))
KEY = KEYRING.signing_key
OUR_COMPONENTS = rfc9421.parse_components(COMPONENTS)
POLICY = rfc9421.VerifyPolicy()
ROUTE = rfc9421.Rfc9421Verifier(POLICY)
_LIB_KEYS = {KEY_ID: KEY.material}
LIB_SIGNER = HTTPMessageSigner(
    signature_algorithm=algorithms.HMAC_SHA256,
    key_resolver=MappingKeyResolver(public_keys=_LIB_KEYS, private_keys=_LIB_KEYS),
)
LIB_VERIFIER = HTTPMessageVerifier(
    signature_algorithm=algorithms.HMAC_SHA256,
    key_resolver=MappingKeyResolver(public_keys=_LIB_KEYS, private_keys=_LIB_KEYS),
)
MAX_AGE = datetime.timedelta(seconds=300)


def _view(headers: CIMultiDict[str]) -> rfc9421.RequestView:
    return rfc9421.RequestView(
        method=METHOD, authority=AUTHORITY, path=PATH, query=QUERY, headers=headers, scheme="https"
    )


def ours_sign() -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(BASE_HEADERS)
    headers["Content-Digest"] = content_digest(BODY)
    signed = rfc9421.sign(
        _view(headers),
        KEY,
        OUR_COMPONENTS,
        created=int(time.time()),
        nonce=secrets.token_urlsafe(16),
        tag=TAG,
    )
    headers["Signature-Input"] = signed.signature_input
    headers["Signature"] = signed.signature
    return headers


def ours_verify(headers: CIMultiDict[str]) -> rfc9421.Verified:
    """What a verify route runs: its compiled plan (gateway/signing/verify_plan.py)."""
    return ROUTE.check_headers(_view(headers), KEYRING, time.time()).check_body(BODY)


def ours_verify_general(headers: CIMultiDict[str]) -> rfc9421.Verified:
    """The general path alone: what a request the plan passes on costs."""
    return rfc9421.verify(_view(headers), BODY, KEYRING, POLICY, time.time())


def lib_sign() -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(BASE_HEADERS)
    message = types.SimpleNamespace(method=METHOD, url=URL, headers=headers)
    LIB_SIGNER.sign(
        message,
        key_id=KEY_ID,
        created=datetime.datetime.now(datetime.UTC),
        nonce=secrets.token_urlsafe(16),
        label="sig1",
        tag=TAG,
        include_alg=True,
        covered_component_ids=COMPONENTS,
        body=BODY,  # the library builds the Content-Digest
    )
    return headers


def lib_verify(headers: CIMultiDict[str]) -> object:
    message = types.SimpleNamespace(method=METHOD, url=URL, headers=headers)
    return LIB_VERIFIER.verify(message, max_age=MAX_AGE, require_components=COMPONENTS, body=BODY)


def _cross_check() -> None:
    """Same work: ours verifies theirs, theirs verifies ours."""
    lib_verify(ours_sign())
    ours_verify(lib_sign())


_RECORDER = metrics.Recorder()


def metrics_per_request() -> None:
    """What the edge records for one verified request (gateway/proxy/app.py ``_recorder``),
    with the once-a-second flush into prometheus-client amortised in (one flush per 1000)."""
    _RECORDER.count(metrics.REQUESTS, ("verify", "in", "forwarded", ""))
    _RECORDER.observe(metrics.REQUEST_SECONDS, ("verify", "in"), 0.0012)
    _RECORDER.observe(metrics.UPSTREAM_SECONDS, ("in",), 0.0008)
    _RECORDER.count(metrics.VERIFICATIONS, ("in", "micro", KEY_ID))


def metrics_thousand_requests() -> None:
    for _ in range(1000):
        metrics_per_request()
    _RECORDER.flush()


def _time(fn: Callable[[], object], number: int, repeat: int) -> dict[str, float]:
    per_call = [t / number * 1e6 for t in timeit.Timer(fn).repeat(repeat=repeat, number=number)]
    return {"best_us": round(min(per_call), 2), "median_us": round(statistics.median(per_call), 2)}


def run(quick: bool = False) -> dict[str, Any]:
    _cross_check()
    number, repeat = (300, 5) if quick else (3000, 9)
    our_signed, lib_signed = ours_sign(), lib_sign()
    results = {
        "ours_sign": _time(ours_sign, number, repeat),
        "ours_verify": _time(lambda: ours_verify(our_signed), number, repeat),
        "ours_verify_general": _time(lambda: ours_verify_general(our_signed), number, repeat),
        "lib_sign": _time(lib_sign, max(number // 10, 30), repeat),
        "lib_verify": _time(lambda: lib_verify(lib_signed), max(number // 10, 30), repeat),
    }
    thousand = _time(metrics_thousand_requests, max(number // 100, 3), repeat)
    results["metrics_per_request"] = {k: round(v / 1000, 3) for k, v in thousand.items()}
    ours = results["ours_sign"]["median_us"] + results["ours_verify"]["median_us"]
    lib = results["lib_sign"]["median_us"] + results["lib_verify"]["median_us"]
    return {
        "request": f"{METHOD} {URL} ({len(BODY)}-byte JSON body), covering {' '.join(COMPONENTS)}",
        "timings": results,
        "ours_sign_plus_verify_us": round(ours, 2),
        "lib_sign_plus_verify_us": round(lib, 2),
        "speedup": round(lib / ours, 2),
        "number": number,
        "repeat": repeat,
    }


def format_markdown(result: dict[str, Any]) -> str:
    t = result["timings"]
    lines = [
        f"Request: {result['request']}. lib = http-message-signatures.",
        f"timeit, per call, best / median of {result['repeat']} repeats.",
        "",
        "| operation | ours best µs | ours median µs | lib best µs | lib median µs | speed-up (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op in ("sign", "verify"):
        ours, lib = t[f"ours_{op}"], t[f"lib_{op}"]
        lines.append(
            f"| {op} | {ours['best_us']} | {ours['median_us']} | {lib['best_us']} | {lib['median_us']} "
            f"| {lib['median_us'] / ours['median_us']:.1f}x |"
        )
    lines.append(
        f"| sign + verify | | {result['ours_sign_plus_verify_us']} | | {result['lib_sign_plus_verify_us']} "
        f"| **{result['speedup']}x** |"
    )
    m, general = t["metrics_per_request"], t["ours_verify_general"]
    lines += [
        "",
        f"verify is a verify route's compiled plan; the general path alone (a request the plan passes "
        f"on): {general['best_us']} µs best, {general['median_us']} µs median.",
        "",
        f"Metrics recorded per verified request (counts, two latency observations, matched key; flush "
        f"amortised): {m['best_us']} µs best, {m['median_us']} µs median.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(json.dumps(result, indent=2) if args.json else format_markdown(result))


if __name__ == "__main__":
    main()
