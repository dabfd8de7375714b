"""The pure rotation lifecycle: every step, its boundaries to the second, the invariants after
every apply, and a simulation of signers and verifiers that refresh on an interval."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from inspect import ismodule

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.rotation
from gateway.errors import ConfigError, VerificationError
from gateway.keys.formats import dump_lifecycle, parse_keyring
from gateway.keys.model import Key, Keyring, KeyState
from gateway.rotation import (
    Action,
    ActionKind,
    InvariantViolation,
    Plan,
    Policy,
    Refusal,
    Request,
    RotationRefused,
    Step,
    apply,
    check_invariants,
    new_key_id,
    plan,
    propagation_delay_for,
)
from gateway.rotation.policy import replay

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
DAY = 86400.0
PENDING, PRIMARY, RETIRING = KeyState.PENDING, KeyState.PRIMARY, KeyState.RETIRING
POLICY = Policy()  # delay 126 s, overlap 24 h, period 30 d, skew 60 s
DELAY = POLICY.propagation_delay


def secret_for(key_id: str) -> str:
    return ((key_id + "~") * 64)[:64]  # 64 printable bytes, easy to spot in any text


def rng(seed: int = 7) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def doc(*keys: dict[str, object], name: str = "ring") -> Keyring:
    """A lifecycle keyring from key entries (times as epoch seconds)."""
    entries = []
    for entry in keys:
        out = {"secret": secret_for(str(entry["id"])), **entry}
        for f in ("created_at", "promoted_at", "expires_at"):
            if out.get(f) is not None:
                out[f] = dt(float(out[f]))  # type: ignore[arg-type]
        entries.append(out)
    return parse_keyring(name, json.dumps({"hmac_gateway_keyring": 1, "keys": entries}))


def dt(ts: float) -> str:
    from gateway.clock import to_rfc3339

    return to_rfc3339(ts)


def primary(key_id: str = "a", since: float = T0) -> dict[str, object]:
    return {"id": key_id, "state": "primary", "created_at": since - DELAY, "promoted_at": since}


def pending(key_id: str, since: float) -> dict[str, object]:
    return {"id": key_id, "state": "pending", "created_at": since}


def retiring(key_id: str, until: float, promoted: float = T0 - 40 * DAY) -> dict[str, object]:
    return {
        "id": key_id,
        "state": "retiring",
        "created_at": promoted - DELAY,
        "promoted_at": promoted,
        "expires_at": until,
    }


def secrets_of(*rings: Keyring) -> set[str]:
    return {s for ring in rings for k in ring.keys for s in (k.secret, k.material.hex()) if s}


def assert_no_secret(texts: list[str], rings: tuple[Keyring, ...]) -> None:
    for secret in secrets_of(*rings):
        for text in texts:
            assert secret not in text


def assert_safe_successor(before: Keyring, after: Keyring, p: Plan, policy: Policy) -> None:
    """The invariants, checked here independently of the module's own checker."""
    now, emergency = p.now, p.step is Step.EMERGENCY
    primaries = [k for k in after.keys if k.state is PRIMARY]
    assert len(primaries) == 1 and after.signing_key_id == primaries[0].id
    assert after.signing_key.expires_at is None
    for old in before.keys:
        new = after.get(old.id)
        if new is None:  # no key lost before its expiry (an emergency may drop the compromised/pending ones)
            assert not old.verifies_at(now) or (emergency and old.state in (PRIMARY, PENDING))
            continue
        assert (new.material, new.secret) == (old.material, old.secret)
        if old.expires_at is not None and new.expires_at is not None and not emergency:
            assert new.expires_at >= old.expires_at
        if old.expires_at is None and new.expires_at is not None and not emergency:
            assert new.expires_at >= now + policy.overlap_floor
        if old.state is PENDING and new.state is PRIMARY and not emergency:
            assert old.created_at is not None and now - old.created_at >= policy.propagation_delay
    for new in after.keys:
        if before.get(new.id) is None:
            assert new.state is (PRIMARY if emergency else PENDING)
        if new.state is RETIRING:
            assert new.expires_at is not None
    texts = [repr(p), str(p), json.dumps(p.to_dict()), repr(after), str(after)]
    texts += [repr(a) for a in p.actions] + [str(a) for a in p.actions]
    assert_no_secret(texts, (before, after))


def roundtrip(ring: Keyring, policy: Policy = POLICY) -> Keyring:
    again = parse_keyring(ring.name, dump_lifecycle(ring), encoding=policy.encoding)
    assert [(k.id, k.state, k.material, k.created_at, k.promoted_at, k.expires_at) for k in again.keys] == [
        (k.id, k.state, k.material, k.created_at, k.promoted_at, k.expires_at) for k in ring.keys
    ]
    assert again.signing_key_id == ring.signing_key_id
    return again


def run(ring: Keyring, now: float, request: Request | None = None, policy: Policy = POLICY, seed: int = 7) -> Plan:
    return plan(ring, now, policy, request, random=rng(seed * 1_000_003 + int(now)))  # fresh bytes at each time


def step(ring: Keyring, now: float, request: Request | None = None, policy: Policy = POLICY) -> tuple[Keyring, Plan]:
    """Plan, apply, check every invariant and the document round trip."""
    p = run(ring, now, request, policy)
    after = apply(ring, p)
    if p.changed:
        assert_safe_successor(ring, after, p, policy)
        after = roundtrip(after, policy)
    else:
        assert after is ring
    return after, p


def refused(code: Refusal, ring: Keyring, now: float, request: Request, policy: Policy = POLICY) -> RotationRefused:
    with pytest.raises(RotationRefused) as info:
        run(ring, now, request, policy)
    assert info.value.code is code
    assert_no_secret([str(info.value), repr(info.value)], (ring,))
    return info.value


def kinds(p: Plan) -> list[tuple[str, tuple[str, ...]]]:
    """What each action did to which key; a generated key id shows as ``new``."""
    return [(a.kind.value, ("new",) if a.kind is ActionKind.ADD else a.key_ids) for a in p.actions]


# --- the public face and the policy ------------------------------------------------------------


def test_all_lists_every_public_name() -> None:
    public = {  # submodules (lifecycle, policy, controller, ...) are attributes once imported, not names
        n for n, v in vars(gateway.rotation).items() if not n.startswith("_") and n != "annotations" and not ismodule(v)
    }
    assert set(gateway.rotation.__all__) == public


def test_default_propagation_delay_covers_two_jittered_refreshes_and_a_margin() -> None:
    assert propagation_delay_for(30, 0.1) == pytest.approx(30 * 1.1 * 2 + 60)
    assert POLICY.propagation_delay == pytest.approx(126)
    assert Policy(propagation_delay=propagation_delay_for(300, 0.2)).propagation_delay == pytest.approx(780)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"propagation_delay": 0}, "propagation_delay"),
        ({"overlap": 100}, "overlap"),  # below delay + skew
        ({"clock_skew": -1}, "clock_skew"),
        ({"rotation_period": -5}, "rotation_period"),
        ({"encoding": "rot13"}, "encoding"),
    ],
)
def test_a_policy_that_could_break_senders_is_refused(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        Policy(**kwargs)  # type: ignore[arg-type]
    assert any(p.startswith(field_name) for p in info.value.problems)


# --- add ---------------------------------------------------------------------------------------


def test_add_generates_a_pending_key_from_the_injected_randomness() -> None:
    ring = doc(primary())
    after, p = step(ring, T0 + 5.25, Request(Step.ADD))
    (new,) = [k for k in after.keys if k.state is PENDING]
    assert re.fullmatch(r"key-\d{8}T\d{6}Z-[0-9a-f]{4}", new.id)
    assert new.id.startswith("key-20270115T080005Z-")
    assert re.fullmatch(r"[0-9a-f]{64}", new.secret)  # 32 random bytes, stored hex, used verbatim (raw)
    assert new.material == new.secret.encode()
    assert new.created_at == T0 + 6  # rounded up: it is never promoted early
    assert after.signing_key_id == "a"
    assert run(ring, T0 + 5.25, Request(Step.ADD)).after == p.after  # same randomness, same plan
    assert run(ring, T0 + 5.25, Request(Step.ADD), seed=8).after != p.after


@pytest.mark.parametrize(("encoding", "length"), [("hex", 32), ("base64", 32), ("raw", 64)])
def test_a_new_key_decodes_the_same_way_every_gateway_reads_it(encoding: str, length: int) -> None:
    policy = Policy(encoding=encoding)
    ring = parse_keyring(
        "ring",
        json.dumps({"hmac_gateway_keyring": 1, "keys": [{"id": "a", "secret": "ab" * 32, "state": "primary"}]}),
        encoding=encoding,
    )
    after, _ = step(ring, T0, Request(Step.ADD), policy)
    (new,) = [k for k in after.keys if k.state is PENDING]
    assert len(new.material) == length


def test_add_imports_a_partner_secret_checked_like_any_other() -> None:
    ring = doc(primary())
    partner = "p" * 40
    after, p = step(ring, T0, Request(Step.ADD, secret=partner, key_id="partner-2027"))
    assert after.get("partner-2027") is not None and after.get("partner-2027").material == partner.encode()  # type: ignore[union-attr]
    assert partner not in repr(Request(Step.ADD, secret=partner)) and partner not in json.dumps(p.to_dict())
    hexed, _ = step(ring, T0, Request(Step.ADD, secret="cd" * 32, encoding="hex", key_id="partner-hex"))
    assert hexed.get("partner-hex").material == bytes.fromhex("cd" * 32)  # type: ignore[union-attr]
    short = refused(Refusal.INVALID_SECRET, ring, T0, Request(Step.ADD, secret="s3cr3t-short", key_id="p"))
    assert "s3cr3t-short" not in str(short) and "at least 32" in str(short)
    refused(Refusal.INVALID_SECRET, ring, T0, Request(Step.ADD, secret="zz" * 32, encoding="hex"))
    refused(Refusal.INVALID_REQUEST, ring, T0, Request(Step.PROMOTE, secret="q" * 40))
    # a "new" key that is an old one under another name (say, the compromised one) is no rotation
    reused = Request(Step.EMERGENCY, reason="leak", secret=secret_for("a"))
    assert "reuse the material of key a" in str(refused(Refusal.INVALID_SECRET, ring, T0, reused))


def test_add_refuses_a_second_pending_key_and_says_when_promotion_is_possible() -> None:
    ring = doc(primary(), pending("b", T0))
    error = refused(Refusal.PENDING_EXISTS, ring, T0 + 26, Request(Step.ADD))
    assert error.seconds_remaining == pytest.approx(DELAY - 26)
    assert "key b is already pending" in str(error)


def test_add_refuses_a_taken_or_malformed_key_id() -> None:
    ring = doc(primary())
    refused(Refusal.KEY_ID_TAKEN, ring, T0, Request(Step.ADD, key_id="a"))
    refused(Refusal.INVALID_REQUEST, ring, T0, Request(Step.ADD, key_id='bad "id"'))


def test_new_key_ids_sort_by_time_and_retry_a_collision() -> None:
    assert new_key_id(T0, lambda n: b"\xab\xcd") == "key-20270115T080000Z-abcd"
    taken = new_key_id(T0, lambda n: b"\x00" * n)
    ring = doc(primary())
    ring = Keyring(ring.name, (*ring.keys, Key(taken, b"x" * 32, RETIRING, expires_at=T0 + DAY)), "a", "lifecycle")
    draws = iter([b"\x00\x00", b"\x00\x01", b"r" * 32])
    p = plan(ring, T0, POLICY, Request(Step.ADD), random=lambda n: next(draws))
    assert p.actions[0].key_ids == ("key-20270115T080000Z-0001",)


# --- promote -----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_promote_at_exactly_the_propagation_delay(offset: int) -> None:
    ring = doc(primary(), pending("b", T0 + 100))
    now = T0 + 100 + DELAY + offset
    if offset < 0:
        error = refused(Refusal.TOO_EARLY, ring, now, Request(Step.PROMOTE))
        assert error.seconds_remaining == pytest.approx(1)
        return
    after, p = step(ring, now, Request(Step.PROMOTE))
    assert kinds(p) == [("demote", ("a",)), ("promote", ("b",))]
    assert after.signing_key_id == "b" and after.get("b").promoted_at == now  # type: ignore[union-attr]
    old = after.get("a")
    assert old is not None and old.state is RETIRING and old.expires_at == now + POLICY.overlap


def test_promote_needs_a_pending_key_with_a_known_age() -> None:
    refused(Refusal.NOTHING_PENDING, doc(primary()), T0, Request(Step.PROMOTE))
    ring = doc(primary("a", T0 - 40 * DAY), {"id": "b", "state": "pending"})
    refused(Refusal.PENDING_SINCE_UNKNOWN, ring, T0 + DAY, Request(Step.PROMOTE))
    quiet = run(ring, T0 + DAY)  # cron neither promotes it nor adds a second pending key
    assert not quiet.changed and "never promoted on its own" in quiet.notes[0]


def test_a_shorter_overlap_needs_the_override_and_the_plan_records_it() -> None:
    ring = doc(primary(), pending("b", T0))
    now = T0 + DELAY
    error = refused(Refusal.OVERLAP_TOO_SHORT, ring, now, Request(Step.PROMOTE, overlap=3600))
    assert "override" in str(error)
    after, p = step(ring, now, Request(Step.PROMOTE, overlap=3600, override_overlap=True, reason="partner asked"))
    assert p.overrides == ("short_overlap",) and p.to_dict()["overrides"] == ["short_overlap"]
    assert all(a.overrides == ("short_overlap",) and a.reason == "partner asked" for a in p.actions)
    assert after.get("a").expires_at == now + 3600  # type: ignore[union-attr]
    # never shorter than every sender needs to switch, override or not
    floor = POLICY.overlap_floor
    refused(Refusal.OVERLAP_TOO_SHORT, ring, now, Request(Step.PROMOTE, overlap=floor - 1, override_overlap=True))
    step(ring, now, Request(Step.PROMOTE, overlap=floor, override_overlap=True))
    _, longer = step(ring, now, Request(Step.PROMOTE, overlap=2 * DAY))  # longer needs nothing
    assert longer.overrides == ()


# --- retire ------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_retire_at_exactly_expires_at(offset: int) -> None:
    ends = T0 + DAY
    ring = doc(primary(), retiring("r", ends))
    now = ends + offset
    assert ring.get("r").verifies_at(now) is (offset < 0)  # type: ignore[union-attr]
    if offset < 0:
        error = refused(Refusal.OVERLAP_ACTIVE, ring, now, Request(Step.RETIRE))
        assert error.seconds_remaining == pytest.approx(1)
        return
    after, p = step(ring, now, Request(Step.RETIRE))
    assert kinds(p) == [("remove", ("r",))] and after.get("r") is None
    assert p.stops_verifying == (("r", now),)


def test_retire_removes_only_the_expired_and_names_what_it_may_not_touch() -> None:
    ring = doc(primary(), retiring("r", T0 + 10), retiring("s", T0 + 20))
    after, p = step(ring, T0 + 15, Request(Step.RETIRE))
    assert kinds(p) == [("remove", ("r",))] and after.get("s") is not None
    refused(Refusal.OVERLAP_ACTIVE, ring, T0 + 15, Request(Step.RETIRE, key_id="s"))
    refused(Refusal.UNKNOWN_KEY, ring, T0 + 15, Request(Step.RETIRE, key_id="zzz"))
    refused(Refusal.NOTHING_TO_RETIRE, doc(primary()), T0, Request(Step.RETIRE))
    refused(Refusal.NOTHING_TO_RETIRE, ring, T0 + 15, Request(Step.RETIRE, key_id="a"))


# --- advance: every state combination ----------------------------------------------------------

PENDINGS = {"none": None, "fresh": T0 - 10, "ready": T0 - DELAY}
RETIRINGS = {"none": None, "alive": T0 + 1, "expired": T0}
AGES = {"young": T0 - 29 * DAY, "due": T0 - 30 * DAY}


@pytest.mark.parametrize("age", list(AGES))
@pytest.mark.parametrize("ret", list(RETIRINGS))
@pytest.mark.parametrize("pend", list(PENDINGS))
def test_advance_goes_as_far_as_the_clock_allows_and_no_further(pend: str, ret: str, age: str) -> None:
    keys = [primary("a", AGES[age])]
    if RETIRINGS[ret] is not None:
        keys.insert(0, retiring("r", RETIRINGS[ret], promoted=AGES[age] - 30 * DAY))
    if PENDINGS[pend] is not None:
        keys.append(pending("b", PENDINGS[pend]))
    ring = doc(*keys)
    after, p = step(ring, T0)
    expected = [("remove", ("r",))] if ret == "expired" else []
    if pend == "ready":
        expected += [("demote", ("a",)), ("promote", ("b",))]
    elif pend == "none" and age == "due":
        expected += [("add", ("new",))]
    assert kinds(p) == expected
    # idempotent: again at once changes nothing, and says why and when the next step is possible
    again = run(after, T0)
    assert not again.changed and again.notes
    assert again.next_step_at is not None and again.next_step_at > T0
    assert not run(after, again.next_step_at - 1).changed
    assert run(after, again.next_step_at).changed


def test_advance_never_promotes_the_key_it_just_added() -> None:
    ring = doc(primary("a", T0 - 31 * DAY))
    after, p = step(ring, T0)
    assert [a.kind for a in p.actions] == [ActionKind.ADD]
    assert p.next_step_at == T0 + DELAY
    assert "can be promoted at" in run(after, T0).notes[0]


def test_advance_without_a_rotation_period_waits_to_be_asked() -> None:
    policy = Policy(rotation_period=None)
    p = run(doc(primary("a", T0 - 400 * DAY)), T0, policy=policy)
    assert not p.changed and p.next_step_at is None
    assert p.notes == ("no rotation period: a new key is added only when asked",)


def test_hourly_cron_rotates_keys_for_a_year_and_every_second_run_is_a_no_op() -> None:
    ring = doc(primary("a", T0))
    seen, promotions = set(), 0
    for hour in range(1, 366 * 24):
        now = T0 + hour * 3600
        ring, p = step(ring, now)
        promotions += sum(a.kind is ActionKind.PROMOTE for a in p.actions)
        assert not run(ring, now).changed
        seen |= {k.id for k in ring.keys}
        assert len(ring.keys) <= 3
    assert promotions == 12  # every 30 days and one hour (cron granularity), for a year
    assert len(seen) == 13


# --- emergency ---------------------------------------------------------------------------------


def test_emergency_promotes_a_new_key_at_once_and_expires_the_compromised_one() -> None:
    ring = doc(retiring("r", T0 + DAY), primary("a"), pending("b", T0 - 5))
    refused(Refusal.REASON_REQUIRED, ring, T0, Request(Step.EMERGENCY, reason="  "))
    after, p = step(ring, T0 + 0.5, Request(Step.EMERGENCY, reason="secret pasted in ticket 4711"))
    new = after.signing_key
    assert new.id not in ("a", "b", "r") and new.created_at == new.promoted_at
    assert after.get("a") is None and after.get("b") is None and after.get("r") is not None
    assert dict(p.stops_verifying)["a"] == T0 + 0.5
    body = p.to_dict()
    assert body["reason"] == "secret pasted in ticket 4711"
    assert set(body["overrides"]) == {"emergency", "skip_propagation"}
    assert {a["kind"] for a in body["actions"]} == {"discard", "add", "demote", "promote", "remove"}
    refused(Refusal.ROLLBACK_AFTER_EMERGENCY, after, T0 + 60, Request(Step.ROLLBACK))


def test_emergency_grace_keeps_the_compromised_key_a_little_while_rounded_down() -> None:
    ring = doc(primary("a"))
    after, p = step(ring, T0 + 0.5, Request(Step.EMERGENCY, reason="leak", grace=300))
    old = after.get("a")
    assert old is not None and old.state is RETIRING and old.expires_at == T0 + 300
    assert ("a", T0 + 300) in p.stops_verifying
    policy = Policy(emergency_grace=120)
    after, _ = step(ring, T0, Request(Step.EMERGENCY, reason="leak"), policy)
    assert after.get("a").expires_at == T0 + 120  # type: ignore[union-attr]


def test_emergency_with_an_imported_partner_key() -> None:
    after, _ = step(doc(primary("a")), T0, Request(Step.EMERGENCY, reason="leak", secret="n" * 32, key_id="p2"))
    assert after.signing_key_id == "p2" and after.signing_key.material == b"n" * 32


# --- rollback ----------------------------------------------------------------------------------


def test_rollback_reinstates_the_previous_key_and_keeps_the_other_verifying() -> None:
    ring, _ = step(doc(primary("a"), pending("b", T0)), T0 + DELAY)
    now = T0 + DELAY + 600
    after, p = step(ring, now, Request(Step.ROLLBACK, reason="partner cannot verify b"))
    assert kinds(p) == [("demote", ("b",)), ("reinstate", ("a",))]
    assert after.signing_key_id == "a" and after.signing_key.promoted_at == now
    rolled = after.get("b")
    assert rolled is not None and rolled.state is RETIRING and rolled.expires_at == now + POLICY.overlap
    # the rotation period restarts from the rollback, so cron does not undo it at once
    assert not run(after, now + 3600).changed
    back, _ = step(after, now + 60, Request(Step.ROLLBACK))  # and a rollback of the rollback
    assert back.signing_key_id == "b"


def test_rollback_picks_the_most_recently_demoted_key() -> None:
    ring = doc(
        retiring("old", T0 + DAY, promoted=T0 - 60 * DAY),
        retiring("prev", T0 + DAY, promoted=T0 - 30 * DAY),
        primary("a"),
    )
    after, _ = step(ring, T0 + 10, Request(Step.ROLLBACK))
    assert after.signing_key_id == "prev"


@pytest.mark.parametrize("offset", [-1, 0])
def test_rollback_only_while_every_gateway_can_still_reload_the_previous_key(offset: int) -> None:
    ends = T0 + DAY
    ring = doc(retiring("r", ends, promoted=T0 - 30 * DAY), primary("a"))
    now = ends - POLICY.propagation_delay - POLICY.clock_skew + offset
    if offset == 0:
        refused(Refusal.ROLLBACK_TOO_LATE, ring, now, Request(Step.ROLLBACK))
    else:
        step(ring, now, Request(Step.ROLLBACK))


def test_nothing_to_rollback() -> None:
    refused(Refusal.NOTHING_TO_ROLLBACK, doc(primary("a")), T0, Request(Step.ROLLBACK))
    refused(Refusal.NOTHING_TO_ROLLBACK, doc(retiring("r", T0), primary("a")), T0, Request(Step.ROLLBACK))


# --- flat maps ---------------------------------------------------------------------------------


def flat(*ids: str) -> Keyring:
    return parse_keyring("ring", json.dumps({i: secret_for(i) for i in ids}))


def test_a_flat_map_is_upgraded_by_its_first_rotation_and_old_keys_keep_a_full_overlap() -> None:
    ring = flat("a", "b", "c")
    after, p = step(ring, T0 + 0.5, Request(Step.ADD))
    assert p.before_format == "flat" and p.after_format == "lifecycle" and after.format == "lifecycle"
    upgrade = p.actions[0]
    assert upgrade.kind is ActionKind.UPGRADE and upgrade.key_ids == ("a", "b")
    assert p.to_dict()["actions"][0] == {
        "kind": "upgrade", "key_ids": ["a", "b"], "at": dt(T0), "from": "flat", "to": "lifecycle",
        "expires_at": dt(T0 + DAY + 1), "reason": "", "overrides": [],
    }  # fmt: skip
    assert [(k.id, k.state) for k in after.keys][:3] == [("a", RETIRING), ("b", RETIRING), ("c", PRIMARY)]
    assert all(k.expires_at == math.ceil(T0 + 0.5 + DAY) for k in after.keys[:2])
    assert after.get("c").expires_at is None  # type: ignore[union-attr]


def test_a_flat_map_with_nothing_due_is_left_flat() -> None:
    ring = flat("a", "b")
    p = run(ring, T0, policy=Policy(rotation_period=None))
    assert not p.changed and p.after_format == "flat" and apply(ring, p) is ring
    assert any("flat" in n for n in p.notes)
    refused(Refusal.NOTHING_PENDING, ring, T0, Request(Step.PROMOTE))
    refused(Refusal.OVERLAP_ACTIVE, ring, T0, Request(Step.RETIRE))  # old flat keys get a full overlap first


def test_advance_on_a_flat_map_of_unknown_age_rotates_it() -> None:
    _, p = step(flat("a"), T0)
    assert [a.kind for a in p.actions] == [ActionKind.UPGRADE, ActionKind.ADD]
    assert str(p.actions[0]).startswith("upgrade keyring: flat -> lifecycle")


# --- apply guards ------------------------------------------------------------------------------


def test_apply_refuses_a_plan_made_from_another_version() -> None:
    ring = doc(primary("a"), pending("b", T0))
    p = run(ring, T0 + DELAY)
    after = apply(ring, p)
    with pytest.raises(RotationRefused) as info:
        apply(after, p)
    assert info.value.code is Refusal.STALE_PLAN


def tampered(p: Plan, *actions: Action) -> Plan:
    return dataclasses.replace(p, actions=actions)


def test_apply_checks_every_transition_and_invariant_even_for_a_forged_plan() -> None:
    ring = doc(retiring("r", T0 + DAY), primary("a"), pending("b", T0))
    at = T0 + 1
    p = dataclasses.replace(run(ring, T0 + DELAY), now=at)
    demote_a = Action(ActionKind.DEMOTE, ("a",), at, PRIMARY, RETIRING, T0 + DAY)
    forged = {
        "removed before expiry": (Action(ActionKind.REMOVE, ("r",), at, RETIRING, None),),
        "signs before verifiers hold it": (demote_a, Action(ActionKind.PROMOTE, ("b",), at, PENDING, PRIMARY)),
        "no primary": (demote_a,),
        "two primaries": (Action(ActionKind.PROMOTE, ("b",), at, PENDING, PRIMARY),),
        "pending dropped": (Action(ActionKind.DISCARD, ("b",), at, PENDING, None),),
        "overlap too short": (
            Action(ActionKind.DEMOTE, ("a",), at, PRIMARY, RETIRING, at + 5),
            Action(ActionKind.REINSTATE, ("r",), at, RETIRING, PRIMARY),
        ),
        "wrong source state": (Action(ActionKind.REMOVE, ("a",), at, RETIRING, None),),
        "mislabelled transition": (Action(ActionKind.REMOVE, ("r",), T0 + DAY, PENDING, None),),
        "upgrade of a lifecycle document": (Action(ActionKind.UPGRADE, ("r",), at, expires_at=at),),
    }
    for what, actions in forged.items():
        with pytest.raises(InvariantViolation):  # replay is what apply runs, before comparing results
            replay(ring, tampered(p, *actions))
        with pytest.raises(InvariantViolation):
            apply(ring, tampered(p, *actions))
        assert what


def test_the_invariant_checker_refuses_an_unsafe_successor_on_its_own() -> None:
    before = doc(retiring("r", T0 + DAY), primary("a"), pending("b", T0))
    p = dataclasses.replace(run(before, T0 + DELAY), now=T0 + 10)
    unsafe = {
        "expiry moved earlier": doc(retiring("r", T0 + 10), primary("a"), pending("b", T0)),
        "retiring key lost": doc(primary("a"), pending("b", T0)),
        "pending key lost": doc(retiring("r", T0 + DAY), primary("a")),
        "pending signs early": doc(retiring("r", T0 + DAY), retiring("a", T0 + 2 * DAY), primary("b")),
        "new key signs at once": doc(
            retiring("r", T0 + DAY), retiring("a", T0 + 2 * DAY), pending("b", T0), primary("c")
        ),
        "demoted too briefly": doc(primary("r"), retiring("a", T0 + 11), pending("b", T0)),
    }
    for what, after in unsafe.items():
        with pytest.raises(InvariantViolation):
            check_invariants(before, after, p)
        assert what
    # an emergency may cut short the compromised primary and the pending key, never anything else
    emergency = dataclasses.replace(p, step=Step.EMERGENCY)
    check_invariants(before, doc(retiring("r", T0 + DAY), primary("c")), emergency)
    with pytest.raises(InvariantViolation):
        check_invariants(before, doc(primary("c")), emergency)


# --- the whole thing, at random ----------------------------------------------------------------

STEP_REQUESTS = st.one_of(
    st.builds(Request, step=st.just(Step.ADVANCE)),
    st.builds(Request, step=st.just(Step.ADD), secret=st.sampled_from([None, None, "i" * 32, "short"])),
    st.builds(
        Request,
        step=st.just(Step.PROMOTE),
        overlap=st.sampled_from([None, 3600.0, 100.0]),
        override_overlap=st.booleans(),
    ),
    st.builds(Request, step=st.just(Step.RETIRE)),
    st.builds(
        Request,
        step=st.just(Step.EMERGENCY),
        reason=st.sampled_from(["", "leak"]),
        grace=st.sampled_from([None, 0.0, 600.0]),
    ),
    st.builds(Request, step=st.just(Step.ROLLBACK)),
)
GAPS = st.sampled_from([-DAY, -60.0, 0.0, 1.0, 0.5, DELAY - 1, DELAY, 3600.0, DAY - 1, DAY, DAY + 1, 31 * DAY])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(STEP_REQUESTS, GAPS), min_size=1, max_size=25), st.booleans(), st.integers(0, 2**16))
def test_random_steps_at_random_times_keep_every_invariant(
    steps: list[tuple[Request, float]], start_flat: bool, seed: int
) -> None:
    policy = Policy(overlap=DAY, rotation_period=7 * DAY)
    ring = flat("a", "b") if start_flat else doc(primary("a"))
    now = T0
    draws = random.Random(seed).randbytes
    for request, gap in steps:
        now += gap
        try:
            p = plan(ring, now, policy, request, random=draws)
        except RotationRefused as error:
            assert error.code in Refusal
            assert_no_secret([str(error)], (ring,))
            assert not request.secret or request.secret not in str(error)
            continue
        after = apply(ring, p)
        if p.changed:
            assert_safe_successor(ring, after, p, policy)
            after = roundtrip(after, policy)
        if request.step is Step.ADVANCE:
            assert not plan(after, now, policy, random=draws).changed
        ring = after


# --- simulation: signers and verifiers refreshing on an interval -------------------------------


@dataclass
class Node:
    """A gateway process: holds the keyring it last loaded and refreshes it every interval ± jitter."""

    rand: random.Random
    interval: float = 30.0
    jitter: float = 0.1
    skew: float = 0.0  # its clock runs ahead of the controller's by this much
    ring: Keyring | None = None
    next_refresh: float = 0.0

    def tick(self, now: float, store: Store) -> None:
        if self.ring is None:
            self.ring = store.read(now)
        elif now >= self.next_refresh:
            self.ring = store.read(now)
            self.next_refresh = now + self.interval * (1 + self.rand.uniform(-self.jitter, self.jitter))


@dataclass
class Store:
    """The secret: every version with the time it was written; a read lags writes by ``lag`` s."""

    history: list[tuple[float, Keyring]] = field(default_factory=list)
    lag: float = 1.0

    def read(self, now: float) -> Keyring:
        return [ring for at, ring in self.history if at <= now - self.lag][-1]

    def write(self, now: float, ring: Keyring) -> None:
        self.history.append((now, parse_keyring(ring.name, dump_lifecycle(ring))))


Controller = Callable[[Keyring, float], Keyring]


def lifecycle_controller(policy: Policy) -> Controller:
    draws = random.Random(99).randbytes

    def advance(ring: Keyring, now: float) -> Keyring:
        return apply(ring, plan(ring, now, policy, random=draws))

    return advance


def naive_controller(period: float) -> Controller:
    """The bug the pending state prevents: a new key signs the moment it is written."""
    counter = itertools.count()

    def rotate(ring: Keyring, now: float) -> Keyring:
        if now - (ring.signing_key.promoted_at or 0) < period:
            return ring
        key = Key(f"k{next(counter)}", b"", PRIMARY, secret=f"{next(counter):064d}", created_at=now, promoted_at=now)
        old = dataclasses.replace(ring.signing_key, state=RETIRING, expires_at=now + DAY)
        return Keyring(ring.name, (old, key), key.id, "lifecycle")

    return rotate


def simulate(controller: Controller, *, hours: float = 10, skew: float = 0.0, seed: int = 3) -> tuple[int, int, int]:
    """(signatures, failed verifications, rotations) over ``hours``, ticking every 2 s."""
    rand = random.Random(seed)
    store = Store()
    store.write(T0 - 3600, doc(primary("a", T0 - 3 * 3600)))
    signers = [Node(random.Random(rand.random()), next_refresh=T0 + rand.uniform(0, 30)) for _ in range(3)]
    verifiers = [Node(random.Random(rand.random()), skew=skew, next_refresh=T0 + rand.uniform(0, 30)) for _ in range(3)]
    signed = failed = 0
    rotations = set()
    for tick in range(int(hours * 3600 / 2)):
        now = T0 + tick * 2
        if tick % 5 == 0:  # the controller runs every 10 s
            current = store.history[-1][1]
            nxt = controller(current, now)
            if nxt is not current:
                store.write(now, nxt)
        for node in (*signers, *verifiers):
            node.tick(now, store)
        for signer in signers:
            assert signer.ring is not None
            key = signer.ring.signing_key
            rotations.add(key.id)
            for verifier in verifiers:
                assert verifier.ring is not None
                signed += 1
                try:
                    held = verifier.ring.verifying_key(key.id, now + verifier.skew)
                except VerificationError:
                    failed += 1
                    continue
                if held.material != key.material:
                    failed += 1
    return signed, failed, len(rotations)


SIM_POLICY = Policy(overlap=3600, rotation_period=2 * 3600)  # several full cycles in ten hours


def test_simulation_respecting_the_propagation_delay_never_fails_a_verification() -> None:
    signed, failed, keys = simulate(lifecycle_controller(SIM_POLICY))
    assert failed == 0
    assert keys >= 5 and signed > 100_000  # it really rotated, many times


def test_simulation_without_the_pending_state_fails_verifications() -> None:
    _, failed, keys = simulate(naive_controller(2 * 3600))
    assert keys >= 5 and failed > 0


def test_simulation_with_a_propagation_delay_shorter_than_a_refresh_fails() -> None:
    hasty = Policy(propagation_delay=1, clock_skew=0, overlap=3600, rotation_period=2 * 3600)
    _, failed, _ = simulate(lifecycle_controller(hasty))
    assert failed > 0


def test_verifiers_whose_clock_runs_ahead_within_the_skew_hold_every_key_they_need() -> None:
    """A verifier ahead by N refuses a retiring key N seconds early (controller time). Senders stop
    using the old primary within one propagation delay of the promotion, so an overlap of at least
    propagation delay + skew (the floor every overlap respects) is enough; pending keys carry no
    expiry, so the skew never matters for them. Tested at the floor itself, the tightest overlap."""
    tight = Policy(overlap=POLICY.overlap_floor, rotation_period=2 * 3600)
    assert simulate(lifecycle_controller(tight), skew=POLICY.clock_skew)[1] == 0
    # and the simulation does notice a verifier further ahead than the policy allows for
    assert simulate(lifecycle_controller(tight), skew=400)[1] > 0
