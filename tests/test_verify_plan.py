"""The compiled verify plan (gateway/signing/verify_plan.py) reaches the general path's verdict.

The plan only accepts; everything else goes to ``rfc9421``'s general path. So on any input --
right or wrong parameters, windows, keys, digests, signatures, header lines, policies -- the
route's verifier (plan first) and ``rfc9421.verify`` (general path only) must give the same
``Verified`` or the same refusal: reason, wording and claimed key id.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import VerificationError
from gateway.keys.model import Key, Keyring, KeyState
from gateway.signing import rfc9421, verify_plan
from gateway.signing import structured as sf
from gateway.signing.digest import content_digest
from tests.helpers import REQUIRED, lib_signed_webhook, random_secret

NOW = 1_700_000_000
ACTIVE = Key("key-v1", bytes.fromhex(random_secret()), KeyState.PRIMARY)
PENDING = Key("key-v2", bytes.fromhex(random_secret()), KeyState.PENDING)
EXPIRED = Key("key-v0", bytes.fromhex(random_secret()), KeyState.RETIRING, expires_at=NOW - 1)
KEYRING = Keyring("ring", (ACTIVE, PENDING, EXPIRED), "key-v1", "lifecycle")
ONLY_EXPIRED = Keyring("ring", (EXPIRED, ACTIVE), "key-v1", "lifecycle")

COMPONENTS = [
    '"@method"',
    '"@authority"',
    '"@path"',
    '"@query"',
    '"content-digest"',
    '"content-type"',
    '"x-a"',
    '"@target-uri"',
    '"@scheme"',
    '"x-a";bs',
    '"@query-param";name="id"',
    '"@bogus"',
    '"Content-Type"',
    '"x-{}"',  # braces: the plan's base template must not read them as its own fields
    '"x-{0}"',
]
PARAMS_CHOICES = [
    ";created={created}",
    ";created={created}",
    ";created=0{created}",
    ';created="{created}"',
    ";expires={expires}",
    ";expires={expired}",
    ';keyid="key-v1"',
    ';keyid="key-v1"',
    ';keyid="key-v2"',
    ';keyid="key-v0"',
    ';keyid="nobody"',
    ";keyid=key-v1",
    ';alg="hmac-sha256"',
    ';alg="rsa-pss-sha512"',
    ';nonce="n-{created}"',
    ';nonce="a;b"',
    ';nonce="a\\\\b"',
    ';tag="partner"',
    ';tag="other"',
    ";x=1",
    ";nonce",
    ';nonce="' + "n" * sf.MAX_LENGTH + '"',  # past the length the general path accepts
]
PARAMS = st.lists(st.sampled_from(PARAMS_CHOICES), max_size=7)
HEADER_VALUES = st.sampled_from(["application/json", " application/json ", "caf\udcc3\udca9", "a\rb", "a\nb", ""])


def _policy(change: str) -> rfc9421.VerifyPolicy:
    return {
        "default": rfc9421.VerifyPolicy(),
        "no-coverage": rfc9421.VerifyPolicy(required=frozenset()),
        "type-covered": rfc9421.VerifyPolicy(required=frozenset({'"@method"', '"content-type"'})),
        "nonce": rfc9421.VerifyPolicy(require_nonce=True),
        "alg": rfc9421.VerifyPolicy(require_alg=True),
        "tag": rfc9421.VerifyPolicy(expected_tag="partner"),
        "one-signature": rfc9421.VerifyPolicy(max_signatures=1),
        "strict": rfc9421.VerifyPolicy(require_nonce=True, require_alg=True, expected_tag="partner"),
    }[change]


def outcome(fn: object) -> tuple[object, ...]:
    assert callable(fn)
    try:
        return ("verified", fn())
    except VerificationError as exc:
        return ("refused", type(exc), exc.reason, str(exc), exc.key_id)


def _mac(view: rfc9421.RequestView, components: list[str], params_text: str, key: Key, reading: str) -> str:
    """A MAC over the base a careless verifier would build (``reading``): values as the RFC
    reads them, first field line only, or unstripped; joined with no check for line breaks or
    non-ASCII. A check the plan lacks then shows up as a request it accepts and the general
    path refuses."""
    lines = []
    for text in components:
        try:
            component = rfc9421.Component.parse(text)
        except (rfc9421.ComponentError, ValueError):
            lines.append(text)
            continue
        try:
            value = rfc9421.component_value(view, component)
            if reading != "rfc" and component.name[0] != "@" and not component.params:
                value = view.headers.getall(component.name, ["None"])[0]  # absent: str(None)
                value = value.strip(" \t") if reading == "first-line" else value
        except rfc9421.ComponentError:
            value = "None" if reading != "rfc" else ""
        lines.append(f"{component.identifier}: {value}")
    lines.append('"@signature-params": (' + " ".join(components) + ")" + params_text)
    base = "\n".join(lines).encode("utf-8", "surrogateescape")
    return base64.b64encode(hmac.digest(key.material, base, "sha256")).decode()


def _edit(good: list[str], edits: list[tuple[int, str | None]]) -> list[str]:
    """``good`` with some items replaced (or dropped, for None) and some added at the end."""
    out: list[str | None] = list(good)
    for index, replacement in edits:
        if index < len(out):
            out[index] = replacement
        elif replacement is not None:
            out.append(replacement)
    return [item for item in out if item is not None]


def _edits(choices: list[str], size: int) -> st.SearchStrategy[list[tuple[int, str | None]]]:
    return st.lists(st.tuples(st.integers(0, size), st.none() | st.sampled_from(choices)), min_size=1, max_size=2)


GOOD_COMPONENTS = ['"@method"', '"@authority"', '"@path"', '"@query"', '"content-digest"', '"content-type"']
GOOD_PARAMS = [";created={created}", ';keyid="key-v1"', ';alg="hmac-sha256"', ';nonce="n-{created}"', ';tag="partner"']
# Each example starts from a request every policy here accepts and changes up to three of its
# parts, so that both the plan's acceptances and each way out of it are exercised.
DIMENSIONS = {
    "components": st.lists(st.sampled_from(COMPONENTS), max_size=7)
    | st.builds(_edit, st.just(GOOD_COMPONENTS), _edits(COMPONENTS, len(GOOD_COMPONENTS))),
    "params": PARAMS | st.builds(_edit, st.just(GOOD_PARAMS), _edits(PARAMS_CHOICES, len(GOOD_PARAMS))),
    "skew": st.sampled_from([-299, -300, -301, 29, 30, 31]),
    "policy": st.sampled_from(["no-coverage", "type-covered", "nonce", "alg", "tag", "one-signature", "strict"]),
    "body": st.just(b""),
    "digest": st.sampled_from(
        ["wrong", "sha-512", "two-entries", "two-lines", "second-line-wrong", "absent", "padded", "non-ascii"]
    ),
    "signature": st.sampled_from(
        ["wrong", "other-key", "label", "params", "two-labels", "same-label-twice", "short", "non-canonical"]
    ),
    "inputs": st.sampled_from(["same-label-twice", "second-label"]),
    "reading": st.sampled_from(["first-line", "raw"]),
    "content_type": st.none() | HEADER_VALUES,
    "x_a": st.lists(HEADER_VALUES, min_size=1, max_size=2),
    "query": st.none() | st.sampled_from(["", "id=7&id=8"]),
    "keyring": st.just(ONLY_EXPIRED),
}
GOOD = {
    "components": GOOD_COMPONENTS,
    "params": GOOD_PARAMS,
    "skew": 0,
    "policy": "default",
    "body": b'{"event": 1}',
    "digest": "right",
    "signature": "right",
    "inputs": "one",
    "reading": "rfc",
    "content_type": "application/json",
    "x_a": [],
    "query": "id=7",
    "keyring": KEYRING,
}


@settings(max_examples=4000, deadline=None)
@given(
    changed=st.lists(st.sampled_from(sorted(DIMENSIONS)), max_size=3, unique=True),
    data=st.data(),
)
def test_the_plan_reaches_the_general_paths_verdict(changed: list[str], data: st.DataObject) -> None:
    drawn = {name: data.draw(DIMENSIONS[name], label=name) if name in changed else GOOD[name] for name in GOOD}
    event(check_one_request(**drawn))


def check_one_request(
    components: list[str],
    params: list[str],
    skew: int,
    policy: str,
    body: bytes,
    digest: str,
    signature: str,
    inputs: str,
    reading: str,
    content_type: str | None,
    x_a: list[str],
    query: str | None,
    keyring: Keyring,
    braces: bool = False,
) -> str:
    """Build one request, check both paths agree on it; which path decided it."""
    created = NOW + skew
    params_text = "".join(p.format(created=created, expires=NOW + 60, expired=NOW) for p in params)
    headers: CIMultiDict[str] = CIMultiDict({"Host": "gw.example"})
    if content_type is not None:
        headers["Content-Type"] = content_type
    for value in x_a:
        headers.add("X-A", value)
    if braces:  # present, so that the plan gets as far as assembling the base
        headers.update({"X-{}": "v", "X-{0}": "w"})
    sha256 = content_digest(body)
    sha512 = content_digest(body, "sha-512")
    digests = {
        "right": [sha256],
        "wrong": [content_digest(body + b"!")],
        "sha-512": [sha512],
        "two-entries": [f"{sha256}, {sha512}"],
        "two-lines": [sha256, sha512],
        "second-line-wrong": [sha256, content_digest(body + b"!", "sha-512")],
        "absent": [],
        "padded": [sha256.replace("=:", "= :")],
        "non-ascii": [sha256[:-2] + "\udcc3\udca9:"],
    }[digest]
    for value in digests:
        headers.add("Content-Digest", value)
    head = "sig1=(" + " ".join(components) + ")"
    headers["Signature-Input"] = head + params_text
    if inputs == "same-label-twice":
        headers.add("Signature-Input", 'sig1=("@method");created=1')
    elif inputs == "second-label":
        headers.add("Signature-Input", 'sig2=("@method");created=1')
    view = rfc9421.RequestView("POST", "gw.example", "/hooks", query, headers, "https")
    named = keyring.get(params[1][8:-1]) if len(params) > 1 and params[1].startswith(";keyid=") else None
    key = PENDING if signature == "other-key" else (named or ACTIVE)
    mac = _mac(view, components, params_text, key, reading)
    raw = base64.b64decode(mac)
    signatures = {
        "right": [f"sig1=:{mac}:"],
        "other-key": [f"sig1=:{mac}:"],
        "wrong": [f"sig1=:{base64.b64encode(hashlib.sha256(raw).digest()).decode()}:"],
        "label": [f"sig2=:{mac}:"],
        "params": [f"sig1=:{mac}:;x=1"],
        "two-labels": [f"sig1=:{mac}:", "sig2=:AAAA:"],
        "same-label-twice": [f"sig1=:{mac}:", "sig1=:AAAA:"],
        "short": ["sig1=::"],
        # the same 32 bytes with the two unused bits of the last sextet set
        "non-canonical": [f"sig1=:{mac[:42]}{_B64[_B64.index(mac[42]) | 3]}=:"],
    }[signature]
    for value in signatures:
        headers.add("Signature", value)

    route_policy = _policy(policy)
    route = rfc9421.Rfc9421Verifier(route_policy)
    accepted = route.planner.check_headers(view, keyring, NOW)
    on_plan = accepted is not None and verify_plan.check_body(view, body, accepted) is not None
    planned = outcome(lambda: route.check_headers(view, keyring, NOW).check_body(body))
    general = outcome(lambda: rfc9421.verify(view, body, keyring, route_policy, NOW))
    assert planned == general, (planned, general)
    return "verified on the plan" if on_plan else "headers on the plan" if accepted else "general path"


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _single_changes() -> list[dict[str, object]]:
    """Every one-part change to the good request, and the few multi-part ones a careless plan
    would need to meet at once (a covered field sent twice, or with spaces, signed carelessly)."""
    changes: list[dict[str, object]] = [{}]
    for i in range(len(GOOD_PARAMS) + 1):
        for choice in [None, *PARAMS_CHOICES]:
            changes.append({"params": _edit(GOOD_PARAMS, [(i, choice)])})
    for i in range(len(GOOD_COMPONENTS) + 1):
        for choice in [None, *COMPONENTS]:
            changes.append({"components": _edit(GOOD_COMPONENTS, [(i, choice)])})
    for name in ("skew", "digest", "signature", "inputs", "query"):
        for value in ("-299", "-300", "-301", "29", "30", "31") if name == "skew" else _VARIANTS[name]:
            changes.append({name: int(value) if name == "skew" else value})
    changes.append({"body": b""})
    changes.append({"keyring": ONLY_EXPIRED})
    covered_x = [*GOOD_COMPONENTS, '"x-a"']
    for reading in ("rfc", "first-line", "raw"):
        for values in (["a", "b"], [" a "], ["a\nb"], ["caf\udcc3\udca9"], [""]):
            changes.append({"components": covered_x, "x_a": values, "reading": reading})
        for value in (" application/json ", "a\rb", "a\nb", "caf\udcc3\udca9"):
            changes.append({"content_type": value, "reading": reading})
        changes.append({"digest": "second-line-wrong", "reading": reading})
    for name in ('"x-{}"', '"x-{0}"'):
        changes.append({"components": [*GOOD_COMPONENTS, name], "braces": True})
    return changes


_VARIANTS = {
    "digest": ["wrong", "sha-512", "two-entries", "two-lines", "second-line-wrong", "absent", "padded", "non-ascii"],
    "signature": ["wrong", "other-key", "label", "params", "two-labels", "same-label-twice", "short", "non-canonical"],
    "inputs": ["same-label-twice", "second-label"],
    "query": [None, "", "id=7&id=8"],
}
POLICIES = ["default", "no-coverage", "type-covered", "nonce", "alg", "tag", "one-signature", "strict"]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_single_change_reaches_the_general_paths_verdict(policy: str) -> None:
    """Exhaustive where the random test is thin: each policy against each one-part change."""
    paths = collections.Counter(
        check_one_request(**(GOOD | {"policy": policy} | change))  # type: ignore[arg-type]
        for change in _single_changes()
    )
    assert paths["verified on the plan"] >= 20, paths  # the plan's acceptances are exercised too


def test_what_real_senders_send_stays_on_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """http-message-signatures' request and our own sign route's verify without the general path."""
    secret = random_secret()
    view, body = lib_signed_webhook("key-v1", bytes.fromhex(secret), NOW)
    ours = CIMultiDict(view.headers)
    signed = rfc9421.sign(
        view._replace(headers=ours),
        Key("key-v1", bytes.fromhex(secret), KeyState.PRIMARY),
        rfc9421.parse_components((*REQUIRED, "content-type")),
        created=NOW,
        nonce="n1",
        tag=None,
    )
    ours["Signature-Input"], ours["Signature"] = signed.signature_input, signed.signature

    def general(*_args: object) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(rfc9421, "check_headers", general)
    monkeypatch.setattr(rfc9421, "check_body", general)
    keyring = Keyring("ring", (Key("key-v1", bytes.fromhex(secret), KeyState.PRIMARY),), "key-v1", "flat")
    route = rfc9421.Rfc9421Verifier(rfc9421.VerifyPolicy(expected_tag=None))
    for request in (view, view._replace(headers=ours)):
        verified = route.check_headers(request, keyring, NOW + 5).check_body(body)
        assert verified.key_id == "key-v1"
        assert verified.covered_fields == {"content-digest", "content-type"}


def test_junk_heads_cannot_keep_a_real_sender_off_the_plan() -> None:
    planner = verify_plan.Planner(rfc9421.VerifyPolicy(required=frozenset()), maxsize=8)
    real = 'sig1=("@method" "@path")'
    assert planner.plan(real) is not None
    for i in range(50):
        planner.plan(f'junk{i}=("@method")')
    assert len(planner._plans) == 8  # bounded
    plan = planner.plan(real)  # pushed out, compiled again, not locked out
    assert plan is not None
    assert plan.label == "sig1"
    assert planner.plan(real) is plan


def test_a_head_the_policy_refuses_has_no_plan() -> None:
    planner = verify_plan.Planner(rfc9421.VerifyPolicy())
    assert planner.plan('sig1=("@method")') is None  # insufficient coverage: the general path says so
    assert planner.plan('sig1=("@method" "@method")') is None
