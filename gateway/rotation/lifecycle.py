"""The key lifecycle as a pure state machine: ``plan(keyring, now, policy, request) -> Plan`` and
``apply(keyring, plan) -> Keyring``. No I/O: the controller reads, writes (CAS) and audits.

    (new) --add--> pending --promote--> primary --demote--> retiring --remove--> (removed)
                      |                    ^                    |
                      +--discard-->(removed)  +----reinstate----+   (rollback)

This module decides which actions a request takes at ``now``; ``policy.TRANSITIONS`` guards each
one and ``policy.check_invariants`` checks the result every time a plan is built or applied.
Timestamps written are whole seconds, rounded so a key verifies no shorter than planned (a
compromised key's expiry rounds down), so the document round-trips through RFC 3339 exactly.
"""

from __future__ import annotations

import base64
import hmac
import math
import secrets
from collections.abc import Callable
from dataclasses import replace

from gateway.clock import to_rfc3339
from gateway.errors import KeyringFormatError
from gateway.keys.formats import check_key_id, decode_material
from gateway.keys.model import Key, Keyring, KeyState
from gateway.rotation.policy import (
    TRANSITIONS,
    Action,
    ActionKind,
    InvariantViolation,
    Plan,
    Policy,
    Refusal,
    Request,
    RotationRefused,
    Step,
    replay,
    summarize,
    transition,
)

PENDING, PRIMARY, RETIRING = KeyState.PENDING, KeyState.PRIMARY, KeyState.RETIRING
_EMERGENCY = "emergency"

Random = Callable[[int], bytes]
"""Returns n random bytes; the OS CSPRNG (``secrets.token_bytes``) unless a test injects one."""


def new_key_id(now: float, random: Random = secrets.token_bytes) -> str:
    """``key-YYYYMMDDTHHMMSSZ-xxxx``: sortable by creation, unique enough with four hex digits."""
    return "key-" + to_rfc3339(now).replace(":", "").replace("-", "") + "-" + random(2).hex()


def plan(
    keyring: Keyring,
    now: float,
    policy: Policy | None = None,
    request: Request | None = None,
    *,
    random: Random = secrets.token_bytes,
) -> Plan:
    """Everything ``request`` does to ``keyring`` at ``now``; raises RotationRefused if not allowed."""
    policy = policy or Policy()
    request = request or Request()
    if request.secret is not None and request.step not in (Step.ADD, Step.EMERGENCY):
        raise RotationRefused(Refusal.INVALID_REQUEST, f"{request.step.value} takes no secret (add and emergency do)")
    work = _Work(keyring, now, policy, request, random)
    _STEPS[request.step](work)
    actions = tuple(work.actions)
    if not any(a.kind is not ActionKind.UPGRADE for a in actions):
        actions = ()  # an upgrade alone is no rotation: a flat map stays as it is until one happens
        work.notes += ["flat map left as it is: the first rotation upgrades it"] if keyring.format == "flat" else []
    draft = Plan(
        keyring=keyring.name,
        step=request.step,
        now=now,
        policy=policy,
        actions=actions,
        before=summarize(keyring.keys),
        after=(),
        before_format=keyring.format,
        after_format=keyring.format,
        next_step_at=None,
        reason=request.reason,
        overrides=tuple(dict.fromkeys(o for a in actions for o in a.overrides)),
    )
    after = replay(keyring, draft)
    return replace(
        draft,
        after=summarize(after.keys),
        after_format=after.format,
        next_step_at=_next_step_at(after, now, policy),
        notes=tuple(work.notes),
    )


def apply(keyring: Keyring, plan: Plan) -> Keyring:
    """The keyring after ``plan``; refuses a plan made from another version of the keyring."""
    if keyring.name != plan.keyring or summarize(keyring.keys) != plan.before or keyring.format != plan.before_format:
        raise RotationRefused(Refusal.STALE_PLAN, f"keyring {keyring.name!r} changed since the plan: plan again")
    after = replay(keyring, plan)
    if summarize(after.keys) != plan.after or after.format != plan.after_format:
        raise InvariantViolation(f"keyring {keyring.name!r}: replaying the plan gave another result")
    return after


class _Work:
    """The keyring as the plan builds it: each action is applied as soon as it is decided."""

    def __init__(self, keyring: Keyring, now: float, policy: Policy, request: Request, random: Random) -> None:
        self.keyring, self.now, self.policy, self.request, self.random = keyring, now, policy, request, random
        self.keys = {k.id: k for k in keyring.keys}
        self.actions: list[Action] = []
        self.notes: list[str] = []
        if keyring.format == "flat":
            # Flat keys all verify with no expiry; older entries keep verifying for a full overlap
            # from the upgrade, never less, so no sender that still uses one breaks.
            old = tuple(k.id for k in keyring.keys if k.state is RETIRING)
            self.do(ActionKind.UPGRADE, old, expires_at=math.ceil(now + policy.overlap) if old else None)

    def do(
        self,
        kind: ActionKind,
        key_ids: tuple[str, ...],
        *,
        expires_at: float | None = None,
        reason: str = "",
        overrides: tuple[str, ...] = (),
        new_key: Key | None = None,
    ) -> None:
        source, target = TRANSITIONS.get(kind, (None, None))
        action = Action(kind, key_ids, self.now, source, target, expires_at, reason, overrides, new_key)
        self.keys = transition(self.keys, action)
        self.actions.append(action)

    def one(self, state: KeyState) -> Key | None:
        return next((k for k in self.keys.values() if k.state is state), None)

    @property
    def primary(self) -> Key:
        key = self.one(PRIMARY)
        assert key is not None  # parse_keyring and check_invariants guarantee one
        return key

    def new_key(self) -> Key:
        req, policy = self.request, self.policy
        key_id = req.key_id
        for _ in range(16):
            if key_id is not None:
                break
            candidate = new_key_id(self.now, self.random)
            key_id = None if candidate in self.keys else candidate
        if key_id is None or key_id in self.keys:
            raise RotationRefused(
                Refusal.KEY_ID_TAKEN, f"key id {key_id!r} is already in keyring {self.keyring.name!r}"
            )
        try:
            check_key_id(self.keyring.name, key_id)
        except KeyringFormatError as exc:
            raise RotationRefused(Refusal.INVALID_REQUEST, str(exc)) from None
        if req.secret is None:
            encoding, entropy = policy.encoding, self.random(32)
            secret = entropy.hex() if encoding != "base64" else base64.b64encode(entropy).decode()
        else:
            encoding, secret = req.encoding or policy.encoding, req.secret
        try:
            material = decode_material(secret, encoding, keyring=self.keyring.name, key_id=key_id)
        except KeyringFormatError as exc:  # its message names the key id, never the secret
            raise RotationRefused(Refusal.INVALID_SECRET, str(exc)) from None
        if twin := next((k.id for k in self.keys.values() if hmac.compare_digest(k.material, material)), None):
            raise RotationRefused(Refusal.INVALID_SECRET, f"key {key_id!r} would reuse the material of key {twin}")
        stored = None if encoding == policy.encoding == "raw" else encoding
        stamp = math.ceil(self.now)
        return Key(key_id, material, PENDING, secret=secret, encoding=stored, created_at=stamp)

    def overlap(self) -> tuple[float, tuple[str, ...]]:
        asked, policy = self.request.overlap, self.policy
        if asked is None or asked >= policy.overlap:
            return (policy.overlap if asked is None else asked), ()
        if asked < policy.overlap_floor:
            raise RotationRefused(
                Refusal.OVERLAP_TOO_SHORT,
                f"an overlap of {asked:g} s is shorter than the propagation delay plus clock skew "
                f"({policy.overlap_floor:g} s): senders would break; use emergency for a compromised key",
            )
        if not self.request.override_overlap:
            raise RotationRefused(
                Refusal.OVERLAP_TOO_SHORT,
                f"an overlap of {asked:g} s is shorter than the policy's {policy.overlap:g} s; it needs the override",
            )
        return asked, ("short_overlap",)

    def promote_ready_at(self, key: Key) -> float:
        if key.created_at is None:
            raise RotationRefused(
                Refusal.PENDING_SINCE_UNKNOWN, f"pending key {key.id} has no created_at; set it to when it was added"
            )
        return key.created_at + self.policy.propagation_delay

    def promote(self, key: Key, kind: ActionKind = ActionKind.PROMOTE) -> None:
        """``key`` signs from now on; the primary it replaces verifies for one overlap more."""
        (overlap, overrides), reason, ends = self.overlap(), self.request.reason, math.ceil
        self.do(
            ActionKind.DEMOTE,
            (self.primary.id,),
            expires_at=ends(self.now + overlap),
            reason=reason,
            overrides=overrides,
        )
        self.do(kind, (key.id,), reason=reason, overrides=overrides)


def _add(work: _Work) -> None:
    pending = work.one(PENDING)
    if pending is not None:
        ready = (pending.created_at or work.now) + work.policy.propagation_delay
        raise RotationRefused(
            Refusal.PENDING_EXISTS,
            f"key {pending.id} is already pending; promote it (possible at {to_rfc3339(ready)}) before adding another",
            seconds_remaining=max(0.0, ready - work.now),
        )
    key = work.new_key()
    work.do(ActionKind.ADD, (key.id,), reason=work.request.reason, new_key=key)


def _promote(work: _Work) -> None:
    pending = work.one(PENDING)
    if pending is None:
        raise RotationRefused(Refusal.NOTHING_PENDING, f"keyring {work.keyring.name!r} has no pending key")
    ready = work.promote_ready_at(pending)
    if work.now < ready:
        raise RotationRefused(
            Refusal.TOO_EARLY,
            f"key {pending.id} has not been pending for the propagation delay "
            f"({work.policy.propagation_delay:g} s); promote at {to_rfc3339(math.ceil(ready))} or later",
            seconds_remaining=ready - work.now,
        )
    work.promote(pending)


def _retire(work: _Work) -> None:
    asked = work.request.key_id
    if asked is not None and asked not in work.keys:
        raise RotationRefused(Refusal.UNKNOWN_KEY, f"keyring {work.keyring.name!r} has no key {asked!r}")
    retiring = [k for k in work.keys.values() if k.state is RETIRING and asked in (None, k.id)]
    if not retiring:
        raise RotationRefused(Refusal.NOTHING_TO_RETIRE, f"keyring {work.keyring.name!r}: no retiring key to remove")
    expired = [k for k in retiring if not k.verifies_at(work.now)]
    if not expired:
        first = min(retiring, key=lambda k: k.expires_at or math.inf)
        ends = first.expires_at or math.inf
        raise RotationRefused(
            Refusal.OVERLAP_ACTIVE,
            f"key {first.id} verifies until {to_rfc3339(ends)}; it cannot be removed earlier",
            seconds_remaining=ends - work.now,
        )
    for key in expired:
        work.do(ActionKind.REMOVE, (key.id,), reason=work.request.reason)


def _advance(work: _Work) -> None:
    """Retire what expired, promote a pending key that waited long enough, else add one when due.
    A key added here is never promoted in the same run, so a second run at once changes nothing."""
    policy, now = work.policy, work.now
    for key in [k for k in work.keys.values() if k.state is RETIRING and not k.verifies_at(now)]:
        work.do(ActionKind.REMOVE, (key.id,), reason="expired")
    pending = work.one(PENDING)
    if pending is not None:
        if pending.created_at is None:  # hand-edited: its wait cannot be proven, so cron never promotes it
            work.notes.append(f"pending key {pending.id} has no created_at; it is never promoted on its own")
        elif now >= (ready := work.promote_ready_at(pending)):
            work.promote(pending)
        else:
            work.notes.append(f"pending key {pending.id} can be promoted at {to_rfc3339(math.ceil(ready))}")
        return
    due = _rotation_due_at(work.primary, policy)
    if due is None:
        work.notes.append("no rotation period: a new key is added only when asked")
    elif now >= due:
        key = work.new_key()
        work.do(ActionKind.ADD, (key.id,), reason="rotation period elapsed", new_key=key)
    else:
        work.notes.append(f"primary key {work.primary.id} is due for rotation at {to_rfc3339(math.ceil(due))}")


def _emergency(work: _Work) -> None:
    reason = work.request.reason.strip()
    if not reason:
        raise RotationRefused(Refusal.REASON_REQUIRED, "an emergency rotation needs a reason (it goes to the audit)")
    grace = work.policy.emergency_grace if work.request.grace is None else work.request.grace
    if grace < 0:
        raise RotationRefused(Refusal.INVALID_REQUEST, "the grace period cannot be negative")
    pending = work.one(PENDING)
    if pending is not None:  # it lived in the same document as the compromised key, and never signed
        work.do(ActionKind.DISCARD, (pending.id,), reason=reason, overrides=(_EMERGENCY,))
    compromised = work.primary
    key = work.new_key()
    work.do(ActionKind.ADD, (key.id,), reason=reason, new_key=key)
    # Round the compromised key's end down: it must not verify a second longer than asked.
    ends = math.floor(work.now + grace)
    work.do(ActionKind.DEMOTE, (compromised.id,), expires_at=ends, reason=reason, overrides=(_EMERGENCY,))
    work.do(ActionKind.PROMOTE, (key.id,), reason=reason, overrides=(_EMERGENCY, "skip_propagation"))
    if ends <= work.now:
        work.do(ActionKind.REMOVE, (compromised.id,), reason=reason, overrides=(_EMERGENCY,))


def _rollback(work: _Work) -> None:
    """Re-promote the most recently demoted key. The key rolled back from becomes retiring under the
    normal overlap rule (not removed), so senders that already sign with it keep verifying."""
    current = work.primary
    alive = [k for k in work.keys.values() if k.state is RETIRING and k.verifies_at(work.now)]
    if not alive:
        raise RotationRefused(Refusal.NOTHING_TO_ROLLBACK, f"keyring {work.keyring.name!r}: no key in its overlap")
    if current.created_at is not None and current.created_at == current.promoted_at:
        raise RotationRefused(
            Refusal.ROLLBACK_AFTER_EMERGENCY,
            f"primary key {current.id} never was pending (an emergency rotation): rolling back would bring back "
            "the compromised key",
        )
    order = list(work.keys)
    previous = max(alive, key=lambda k: (k.promoted_at or -math.inf, order.index(k.id)))
    ends = previous.expires_at or math.inf
    # Until every gateway has reloaded, some still hold it as retiring and, clock running ahead,
    # would refuse it at its old expires_at while senders already sign with it again.
    latest = ends - work.policy.propagation_delay - work.policy.clock_skew
    if work.now >= latest:
        raise RotationRefused(
            Refusal.ROLLBACK_TOO_LATE,
            f"key {previous.id} stops verifying at {to_rfc3339(ends)}, before every gateway could reload it",
        )
    work.promote(previous, ActionKind.REINSTATE)


_STEPS: dict[Step, Callable[[_Work], None]] = {Step.ADVANCE: _advance, Step.ADD: _add, Step.PROMOTE: _promote}
_STEPS |= {Step.RETIRE: _retire, Step.EMERGENCY: _emergency, Step.ROLLBACK: _rollback}


def _rotation_due_at(primary: Key, policy: Policy) -> float | None:
    """The period counts from when the primary started signing (a rollback restarts it);
    a key of unknown age (an upgraded flat map) is due at once."""
    if not policy.rotation_period:
        return None
    since = primary.promoted_at if primary.promoted_at is not None else primary.created_at
    return -math.inf if since is None else since + policy.rotation_period


def _next_step_at(keyring: Keyring, now: float, policy: Policy) -> float | None:
    """When ``advance`` can next change ``keyring``: a retiring key expires, the pending key may be
    promoted, or the primary is due for rotation. None: never without being asked."""
    times = [k.expires_at for k in keyring.keys if k.state is RETIRING and k.expires_at is not None]
    pending = next((k for k in keyring.keys if k.state is PENDING), None)
    if pending is not None and pending.created_at is not None:
        times.append(pending.created_at + policy.propagation_delay)
    elif pending is None:
        due = _rotation_due_at(keyring.signing_key, policy)
        if due is not None:
            times.append(due)
    return max(now, min(times)) if times else None
