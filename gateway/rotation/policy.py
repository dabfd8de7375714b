"""What a rotation asks and answers (Policy, Request, Action, Plan, RotationRefused) and how a
plan is carried out: guarded transitions (``TRANSITIONS``) replayed on a snapshot, checked by
``check_invariants``. Which actions to take is ``lifecycle``'s decision. Invariants kept here:
- no ``repr``, ``str``, ``to_dict`` or exception message of anything here holds key material
  (an imported secret and a new key ride in fields with ``repr=False`` that ``to_dict`` skips);
- every refusal carries a stable ``Refusal`` code (the CLI maps codes to exit codes) and, when
  waiting would help, the seconds remaining;
- a Policy that could break senders (a propagation delay of zero, an overlap shorter than the
  propagation delay plus the clock skew) is refused when it is built.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.clock import to_rfc3339
from gateway.errors import ConfigError, GatewayError
from gateway.keys.formats import ENCODINGS
from gateway.keys.model import Key, Keyring, KeyState

PLAN_SCHEMA_VERSION = 1
HOUR = 3600.0
DAY = 24 * HOUR


def propagation_delay_for(refresh_interval: float, refresh_jitter: float, margin: float = 60.0) -> float:
    """How long a pending key waits before it may sign.

    A gateway refreshes at most every ``interval * (1 + jitter)``; a refresh already in flight when
    the write lands may still read the old version, so two such gaps guarantee one complete refresh
    after the write. The margin covers write latency and skew between two controllers' clocks
    (one stamps ``created_at``, another may promote).
    """
    return float(math.ceil(refresh_interval * (1 + refresh_jitter) * 2 + margin))  # whole seconds, as stored


@dataclass(frozen=True, slots=True)
class Policy:
    """The keyring's rotation rules. Times are seconds."""

    propagation_delay: float = propagation_delay_for(30.0, 0.1)
    overlap: float = DAY  # how long a demoted primary keeps verifying
    rotation_period: float | None = 30 * DAY  # None or 0: a new key only when asked
    emergency_grace: float = 0.0  # how long a compromised primary keeps verifying
    clock_skew: float = 60.0  # how far a verifier's clock may run ahead of the controller's
    encoding: str = "raw"  # the keyring's configured encoding, so new secrets decode the same everywhere

    def __post_init__(self) -> None:
        problems = []
        if not self.propagation_delay > 0:
            problems.append("propagation_delay: must be positive (verifiers must hold a key before it signs)")
        if self.clock_skew < 0 or self.emergency_grace < 0:
            problems.append("clock_skew, emergency_grace: must not be negative")
        if self.rotation_period is not None and self.rotation_period < 0:
            problems.append("rotation_period: must not be negative")
        if self.overlap < self.overlap_floor:
            problems.append(
                f"overlap: {self.overlap:g} s is shorter than propagation_delay + clock_skew "
                f"({self.overlap_floor:g} s); senders would still sign with a key verifiers refuse"
            )
        if self.encoding not in ENCODINGS:
            problems.append(f"encoding: unknown encoding {self.encoding!r}")
        if problems:
            raise ConfigError(problems)

    @property
    def overlap_floor(self) -> float:
        """No overlap, not even an overridden one, may be shorter: every sender must have
        switched (one propagation delay) before a verifier whose clock runs ahead stops."""
        return self.propagation_delay + self.clock_skew

    def to_dict(self) -> dict[str, Any]:
        return {
            "propagation_delay_seconds": self.propagation_delay,
            "overlap_seconds": self.overlap,
            "rotation_period_seconds": self.rotation_period or None,
            "emergency_grace_seconds": self.emergency_grace,
            "clock_skew_seconds": self.clock_skew,
        }


class Step(enum.Enum):
    ADVANCE = "advance"  # as far as the clock allows (what `rotate` with no step does)
    ADD = "add"
    PROMOTE = "promote"
    RETIRE = "retire"
    EMERGENCY = "emergency"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Request:
    """What the operator asks. ``secret`` imports a partner's key instead of generating one."""

    step: Step = Step.ADVANCE
    reason: str = ""  # required for emergency; recorded for every step
    secret: str | None = field(default=None, repr=False)
    encoding: str | None = None  # of ``secret``; default: the policy's
    key_id: str | None = None  # add/emergency: id of the new key; retire: the one key to remove
    overlap: float | None = None  # shorter than the policy's needs ``override_overlap``
    override_overlap: bool = False
    grace: float | None = None  # emergency: overrides policy.emergency_grace


class Refusal(enum.Enum):
    """Stable codes of refused steps; never rename one (scripts match on them)."""

    TOO_EARLY = "too_early"  # the pending key has not waited the propagation delay
    OVERLAP_ACTIVE = "overlap_active"  # a retiring key still verifies
    NOTHING_PENDING = "nothing_pending"
    PENDING_EXISTS = "pending_exists"
    PENDING_SINCE_UNKNOWN = "pending_since_unknown"  # a pending key without created_at
    NOTHING_TO_RETIRE = "nothing_to_retire"
    NOTHING_TO_ROLLBACK = "nothing_to_rollback"
    ROLLBACK_TOO_LATE = "rollback_too_late"  # the previous key expires before every gateway could reload
    ROLLBACK_AFTER_EMERGENCY = "rollback_after_emergency"  # it would bring back a compromised key
    OVERLAP_TOO_SHORT = "overlap_too_short"
    REASON_REQUIRED = "reason_required"
    INVALID_SECRET = "invalid_secret"  # noqa: S105 - a code, not a secret
    INVALID_REQUEST = "invalid_request"
    KEY_ID_TAKEN = "key_id_taken"
    UNKNOWN_KEY = "unknown_key"
    STALE_PLAN = "stale_plan"  # the keyring changed since the plan was made: re-plan


class RotationRefused(GatewayError):
    """A step the lifecycle does not allow now (or ever). Never carries key material."""

    def __init__(self, code: Refusal, message: str, *, seconds_remaining: float | None = None) -> None:
        self.code = code
        self.seconds_remaining = seconds_remaining
        super().__init__(message)


class InvariantViolation(GatewayError):
    """A plan would break a lifecycle invariant: a bug in the planner, never the operator's fault."""


class ActionKind(enum.Enum):
    UPGRADE = "upgrade"  # flat map -> lifecycle document
    ADD = "add"  # new -> pending
    PROMOTE = "promote"  # pending -> primary
    DEMOTE = "demote"  # primary -> retiring
    REINSTATE = "reinstate"  # retiring -> primary (rollback)
    REMOVE = "remove"  # retiring -> removed, at or after expires_at
    DISCARD = "discard"  # pending -> removed (emergency only: it lived beside the compromised key)


def _ts(value: float | None) -> str | None:
    return None if value is None else to_rfc3339(value)


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    key_ids: tuple[str, ...]
    at: float
    from_state: KeyState | None = None
    to_state: KeyState | None = None  # None with REMOVE/DISCARD: the key leaves the document
    expires_at: float | None = None  # DEMOTE: when it stops verifying; UPGRADE: for the old flat keys
    reason: str = ""
    overrides: tuple[str, ...] = ()
    new_key: Key | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        gone = self.kind in (ActionKind.REMOVE, ActionKind.DISCARD)
        return {
            "kind": self.kind.value,
            "key_ids": list(self.key_ids),
            "at": _ts(self.at),
            "from": "flat" if self.kind is ActionKind.UPGRADE else (self.from_state and self.from_state.value),
            "to": "lifecycle" if self.kind is ActionKind.UPGRADE else ("removed" if gone else _state(self.to_state)),
            "expires_at": _ts(self.expires_at),
            "reason": self.reason,
            "overrides": list(self.overrides),
        }

    def __str__(self) -> str:
        d = self.to_dict()
        until = f" (verifies until {d['expires_at']})" if self.expires_at is not None else ""
        return f"{self.kind.value} {', '.join(self.key_ids) or 'keyring'}: {d['from'] or 'new'} -> {d['to']}{until}"


def _state(state: KeyState | None) -> str | None:
    return None if state is None else state.value


@dataclass(frozen=True, slots=True)
class KeySummary:
    """A key as a plan shows it: id, state, timestamps. Never the secret."""

    id: str
    state: KeyState
    created_at: float | None = None
    promoted_at: float | None = None
    expires_at: float | None = None

    @classmethod
    def of(cls, key: Key) -> KeySummary:
        return cls(key.id, key.state, key.created_at, key.promoted_at, key.expires_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "created_at": _ts(self.created_at),
            "promoted_at": _ts(self.promoted_at),
            "expires_at": _ts(self.expires_at),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The whole answer to one request at one instant; ``lifecycle.apply`` carries it out."""

    keyring: str
    step: Step
    now: float
    policy: Policy
    actions: tuple[Action, ...]
    before: tuple[KeySummary, ...]
    after: tuple[KeySummary, ...]
    before_format: str
    after_format: str
    next_step_at: float | None  # when `advance` can next do something (None: never on its own)
    notes: tuple[str, ...] = ()  # why nothing (more) happened
    reason: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    @property
    def stops_verifying(self) -> tuple[tuple[str, float], ...]:
        """(key id, when) for every key that stops verifying: removed now, or retiring until expires_at."""
        kept = {s.id for s in self.after}
        gone = [(s.id, self.now) for s in self.before if s.id not in kept]
        ending = [(s.id, s.expires_at) for s in self.after if s.expires_at is not None]
        return tuple(gone + ending)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA_VERSION,
            "keyring": self.keyring,
            "step": self.step.value,
            "now": _ts(self.now),
            "changed": self.changed,
            "format": {"before": self.before_format, "after": self.after_format},
            "actions": [a.to_dict() for a in self.actions],
            "before": [s.to_dict() for s in self.before],
            "after": [s.to_dict() for s in self.after],
            "stops_verifying": [{"key_id": k, "at": _ts(t)} for k, t in self.stops_verifying],
            "next_step_at": _ts(self.next_step_at),
            "notes": list(self.notes),
            "reason": self.reason,
            "overrides": list(self.overrides),
            "policy": self.policy.to_dict(),
        }

    def __str__(self) -> str:
        lines = [f"keyring {self.keyring!r}: {self.step.value} at {_ts(self.now)}"]
        lines += [f"  {a}" for a in self.actions] or ["  no change"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.next_step_at is not None:
            lines.append(f"  next step possible at {_ts(self.next_step_at)}")
        return "\n".join(lines)


PENDING, PRIMARY, RETIRING = KeyState.PENDING, KeyState.PRIMARY, KeyState.RETIRING
TRANSITIONS: dict[ActionKind, tuple[KeyState | None, KeyState | None]] = {
    ActionKind.ADD: (None, PENDING),
    ActionKind.PROMOTE: (PENDING, PRIMARY),
    ActionKind.DEMOTE: (PRIMARY, RETIRING),
    ActionKind.REINSTATE: (RETIRING, PRIMARY),
    ActionKind.REMOVE: (RETIRING, None),
    ActionKind.DISCARD: (PENDING, None),
}


def replay(keyring: Keyring, plan: Plan) -> Keyring:
    if not plan.actions:
        return keyring
    if (plan.actions[0].kind is ActionKind.UPGRADE) != (keyring.format == "flat"):
        raise InvariantViolation(f"keyring {keyring.name!r}: a flat map changes only after an upgrade, first")
    keys = {k.id: k for k in keyring.keys}
    for action in plan.actions:
        keys = transition(keys, action)
    primaries = [k.id for k in keys.values() if k.state is PRIMARY]
    if len(primaries) != 1:
        raise InvariantViolation(f"keyring {keyring.name!r}: {len(primaries)} primary keys after the plan")
    after = Keyring(keyring.name, tuple(keys.values()), primaries[0], "lifecycle", keyring.version_id)
    check_invariants(keyring, after, plan)
    return after


def transition(keys: dict[str, Key], action: Action) -> dict[str, Key]:
    keys = dict(keys)
    if action.kind is ActionKind.UPGRADE:
        for key_id in action.key_ids:
            if keys[key_id].state is not RETIRING or keys[key_id].expires_at is not None:
                raise InvariantViolation(f"upgrade {key_id}: only flat keys without expiry are given one")
            keys[key_id] = replace(keys[key_id], expires_at=action.expires_at)
        return keys
    (key_id,) = action.key_ids
    current = keys.get(key_id)
    source, target = TRANSITIONS[action.kind]
    if (current.state if current else None) is not source or (action.from_state, action.to_state) != (source, target):
        raise InvariantViolation(f"{action.kind.value} {key_id}: not allowed from {current and current.state.value}")
    if action.kind is ActionKind.ADD:
        assert action.new_key is not None
        keys[key_id] = action.new_key
    elif current is None:
        raise InvariantViolation(f"{action.kind.value} {key_id}: no such key")
    elif target is None:
        if action.kind is ActionKind.REMOVE and current.verifies_at(action.at):
            raise InvariantViolation(f"remove {key_id}: it verifies until {current.expires_at}")
        del keys[key_id]
    elif target is PRIMARY:
        if any(k.state is PRIMARY for k in keys.values()):
            raise InvariantViolation(f"{action.kind.value} {key_id}: demote the primary first")
        keys[key_id] = replace(current, state=PRIMARY, promoted_at=math.ceil(action.at), expires_at=None)
    else:
        keys[key_id] = replace(current, state=target, expires_at=action.expires_at)
    return keys


def check_invariants(before: Keyring, after: Keyring, plan: Plan) -> None:
    """Raise InvariantViolation unless ``after`` is a safe successor of ``before`` under ``plan``.
    Only an emergency may cut a key short, and only the compromised primary or a pending key."""
    emergency = plan.step is Step.EMERGENCY
    exempt = {k.id for k in before.keys if k.state is not RETIRING} if emergency else set()
    primaries = [k for k in after.keys if k.state is PRIMARY]
    if len(primaries) != 1 or after.signing_key.state is not PRIMARY or after.signing_key.expires_at is not None:
        raise InvariantViolation(f"keyring {after.name!r}: needs exactly one primary key without expiry")
    for key in after.keys:
        old = before.get(key.id)
        if old is None:
            if key.state is not (PRIMARY if emergency else PENDING):
                raise InvariantViolation(f"key {key.id}: a new key enters as pending")
            continue
        if (old.material, old.secret) != (key.material, key.secret):
            raise InvariantViolation(f"key {key.id}: material changed")
        if key.state is RETIRING and key.expires_at is None:
            raise InvariantViolation(f"key {key.id}: retiring without expires_at")
        limit = old.expires_at if old.expires_at is not None else plan.now + plan.policy.overlap_floor
        if key.expires_at is not None and key.expires_at < limit and key.id not in exempt:
            raise InvariantViolation(f"key {key.id}: would stop verifying before senders have moved on")
        waited = plan.now - (old.created_at if old.created_at is not None else math.inf)
        if key.state is PRIMARY and old.state is PENDING and waited < plan.policy.propagation_delay:
            raise InvariantViolation(f"key {key.id}: signs before every verifier holds it")
    for old in before.keys:
        if after.get(old.id) is None and old.verifies_at(plan.now) and old.id not in exempt:
            raise InvariantViolation(f"key {old.id}: removed while it still verifies")


def summarize(keys: tuple[Key, ...]) -> tuple[KeySummary, ...]:
    return tuple(KeySummary.of(k) for k in keys)
