"""Key rotation: the pure lifecycle (``plan``/``apply``) and the data it speaks in."""

from __future__ import annotations

from gateway.rotation.lifecycle import apply, new_key_id, plan
from gateway.rotation.policy import (
    PLAN_SCHEMA_VERSION,
    Action,
    ActionKind,
    InvariantViolation,
    KeySummary,
    Plan,
    Policy,
    Refusal,
    Request,
    RotationRefused,
    Step,
    check_invariants,
    propagation_delay_for,
)

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "Action",
    "ActionKind",
    "InvariantViolation",
    "KeySummary",
    "Plan",
    "Policy",
    "Refusal",
    "Request",
    "RotationRefused",
    "Step",
    "apply",
    "check_invariants",
    "new_key_id",
    "plan",
    "propagation_delay_for",
]
