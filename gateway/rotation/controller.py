"""The rotation controller: the one place a rotation touches the world.

    load -> parse -> plan -> (dry run: stop) -> apply -> dump -> write(expected_version=loaded)
      ^                                                              |
      +----------- WriteConflict, or an unknown outcome --------------+   (bounded attempts)

Invariants:
- every write is a compare-and-swap against the version the plan was made from, so a keyring is
  only ever replaced by a successor the planner checked (one primary, no key lost before its
  expiry); a writer that loses re-reads and re-plans from what won;
- a write whose outcome is unknown (a 5xx or a lost answer) is settled by reading back: the
  stored document is ours (done) or it is not (plan again); nothing is written twice blindly;
- every action, refusal and emergency is audited before the call returns, and a dry run
  writes nothing but its audit records (marked ``dry_run``);
- the source, clock, randomness, sleep and audit sink are injected; nothing here reads a
  global clock or sleeps on its own.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.clock import Clock, system_clock, to_rfc3339
from gateway.errors import KeyringFormatError, RotationConflict, SourceError, SourceUnavailable, WriteConflict
from gateway.keys.formats import dump_lifecycle, parse_keyring
from gateway.keys.model import Keyring
from gateway.keys.settings import KeyringSettings
from gateway.keys.sources import Document, KeySource
from gateway.rotation.audit import Auditor
from gateway.rotation.lifecycle import Random, apply, plan
from gateway.rotation.policy import ActionKind, Plan, Policy, Request, RotationRefused, Step
from gateway.rotation.settings import policy_for

DEFAULT_ATTEMPTS = 8
Sleep = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one ``run`` did. ``written``: the keyring now holds ``plan.after``."""

    plan: Plan
    written: bool
    dry_run: bool
    attempts: int
    version_id: str  # the version the answer describes (the new one when written)


class Controller:
    """Runs requests against one keyring. Not thread-safe; one per keyring per process is plenty."""

    def __init__(
        self,
        settings: KeyringSettings,
        source: KeySource,
        auditor: Auditor,
        *,
        policy: Policy | None = None,
        clock: Clock = system_clock,
        random: Random = secrets.token_bytes,
        sleep: Sleep = time.sleep,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.settings = settings
        self.source = source
        self.auditor = auditor
        self.policy = policy or policy_for(settings)
        self.clock, self.random, self.sleep = clock, random, sleep
        self.attempts = max(1, attempts)

    @property
    def name(self) -> str:
        return self.settings.name

    def read(self) -> tuple[Document, Keyring]:
        try:
            document = self.source.load()
        except SourceError as exc:
            raise SourceUnavailable(f"keyring {self.name!r}: {exc}") from None
        try:
            keyring = parse_keyring(
                self.name, document.data, encoding=self.settings.encoding, version_id=document.version_id
            )
        except KeyringFormatError as exc:
            raise type(exc)(f"keyring {self.name!r} could not be loaded: {exc}") from None
        return document, keyring

    def preview(self, request: Request | None = None) -> tuple[Keyring, Plan]:
        """The plan at this instant, with no audit and no write (``status`` and ``keys``)."""
        _, keyring = self.read()
        return keyring, plan(keyring, self.clock(), self.policy, request or Request(), random=self.random)

    def run(self, request: Request, *, dry_run: bool = False) -> Outcome:
        """Carry ``request`` out (or only plan it); raises RotationRefused, RotationConflict,
        SourceUnavailable, or KeyringFormatError for a document no gateway could read either."""
        last_error = ""
        for attempt in range(1, self.attempts + 1):
            document, keyring = self.read()
            now = self.clock()
            try:
                the_plan = plan(keyring, now, self.policy, request, random=self.random)
            except RotationRefused as exc:
                self.auditor.refusal(exc, step=request.step.value, at=now, dry_run=dry_run, reason=request.reason)
                raise
            if dry_run or not the_plan.changed:
                self.auditor.plan(the_plan, dry_run=dry_run, version_id=document.version_id)
                return Outcome(the_plan, False, dry_run, attempt, document.version_id)
            data = dump_lifecycle(apply(keyring, the_plan)).encode()
            try:
                written = self.source.write(data, expected_version=document.version_id)
            except WriteConflict:
                last_error = "another writer changed the keyring first"
            except SourceError as exc:
                last_error = str(exc)
                settled = self._read_back(data)
                if settled is not None:  # the write landed; only its answer was lost
                    self.auditor.plan(the_plan, dry_run=False, version_id=settled)
                    return Outcome(the_plan, True, False, attempt, settled)
            else:
                self.auditor.plan(the_plan, dry_run=False, version_id=written.version_id)
                return Outcome(the_plan, True, False, attempt, written.version_id)
            if attempt < self.attempts:
                # Jittered, growing pause: writers that collided do not collide again in lockstep.
                self.sleep(0.02 * attempt * (1 + int.from_bytes(self.random(1), "big") / 255))
        message = f"keyring {self.name!r}: {request.step.value} not written after {self.attempts} attempts"
        self.auditor.failure(
            f"{message}: {last_error}", step=request.step.value, at=self.clock(), dry_run=False, attempts=self.attempts
        )
        if last_error.startswith("another writer"):
            raise RotationConflict(f"{message}: other writers kept changing it first; run again (nothing was lost)")
        raise SourceUnavailable(f"{message}: {last_error}")

    def _read_back(self, data: bytes) -> str | None:
        """The version id if the stored document is exactly ``data`` (our write landed), else None."""
        try:
            current = self.source.load()
        except SourceError:
            return None
        # The documents hold key material: compare them as secrets.
        return current.version_id if hmac.compare_digest(current.data, data) else None


def next_step_line(keyring: Keyring, the_plan: Plan) -> str:
    """One sentence: what ``rotate`` (no step) would do now, or when it next can do something."""
    if the_plan.changed:
        parts = []
        for action in the_plan.actions:
            if action.kind is ActionKind.ADD:
                parts.append("add a new pending key")
            elif action.kind not in (ActionKind.UPGRADE, ActionKind.DEMOTE):  # a promotion implies its demotion
                parts.append(f"{action.kind.value} {', '.join(action.key_ids)}")
        upgrade = " (upgrading the flat map to a lifecycle document)" if the_plan.before_format == "flat" else ""
        return f"rotate would {', '.join(parts)} now{upgrade}"
    if the_plan.next_step_at is None:
        return "rotate has nothing to do until asked (" + "; ".join(the_plan.notes) + ")"
    return f"rotate has nothing to do before {to_rfc3339(the_plan.next_step_at)}"


def emergency_warning(the_plan: Plan, settings: KeyringSettings) -> list[str]:
    """What breaks, said plainly: who keeps failing until they reload the keyring."""
    if the_plan.step is not Step.EMERGENCY or not the_plan.changed:
        return []
    reload_within = settings.refresh.interval * (1 + settings.refresh.jitter)
    new = next((s.id for s in the_plan.after if s.state.value == "primary"), "?")
    lines = []
    for key_id, at in the_plan.stops_verifying:
        if at <= the_plan.now + 0.5 or key_id not in {s.id for s in the_plan.after}:
            when = "now"
        else:
            when = f"at {to_rfc3339(at)}"
        lines.append(f"  key {key_id} stops verifying {when}: every request still signed with it fails from then on.")
    lines.append(
        f"  Gateways signing through this keyring switch to {new} at their next refresh "
        f"(within {reload_within:g} s); until then their requests fail verification."
    )
    lines.append(
        "  Senders holding the secret themselves (partners, services outside the gateway) fail until "
        f"they are given key {new}."
    )
    return lines
