"""The rotation audit trail: one JSON line per action, refusal and emergency.

Invariants:
- a record is built only from a ``Plan``'s summaries, a refusal's code and message, and the
  operator's reason: none of them can hold key material (``policy`` keeps secrets out of every
  ``to_dict``), so no secret reaches the log;
- each record is one ``write`` of one line to a file opened with ``O_APPEND`` (mode 0600), so
  records of concurrent ``rotate`` processes never interleave within a line;
- the actor is who the keyring's source sees: the AWS caller identity (STS GetCallerIdentity)
  for Secrets Manager keyrings, else the OS user. Finding it never fails a rotation.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.clock import to_rfc3339
from gateway.keys.settings import KeyringSettings, SecretsManagerSettings
from gateway.rotation.policy import Plan, RotationRefused

AUDIT_SCHEMA = 1


class AuditSink(Protocol):
    def record(self, entry: dict[str, Any]) -> None: ...


class AuditLog:
    """Appends records to ``path`` (when set) and echoes them to ``stream`` (stderr by default)."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = sys.stderr) -> None:
        self.path = path
        self.stream = stream

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps({"audit": AUDIT_SCHEMA, **entry}, sort_keys=False, separators=(",", ":")) + "\n"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        if self.stream is not None:
            self.stream.write(line)
            self.stream.flush()


class MemoryAudit:
    """Keeps records in a list (for callers that report them another way, and for tests)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, entry: dict[str, Any]) -> None:
        self.records.append(entry)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): the uid still says who
        return f"uid:{os.getuid()}"


def aws_caller(settings: SecretsManagerSettings) -> str:
    """The ARN the AWS chain resolves to. STS's endpoint is botocore's own (``AWS_ENDPOINT_URL_STS``
    overrides it), not the keyring's ``endpoint_url``, which names a Secrets Manager endpoint."""
    try:
        session = boto3.session.Session(profile_name=settings.profile, region_name=settings.region)
        config = Config(connect_timeout=2, read_timeout=3, retries={"total_max_attempts": 1})
        client: Any = session.client("sts", config=config)
        return str(client.get_caller_identity()["Arn"])
    except ClientError as exc:
        return f"aws:unknown ({exc.response.get('Error', {}).get('Code', 'error')})"
    except BotoCoreError as exc:
        return f"aws:unknown ({type(exc).__name__})"


def actor_for(settings: KeyringSettings) -> str:
    if isinstance(settings.source, SecretsManagerSettings):
        return aws_caller(settings.source)
    return os_user()


class Auditor:
    """Turns plans and refusals into records for one keyring, for one actor."""

    def __init__(self, sink: AuditSink, keyring: str, source: str, actor: Callable[[], str]) -> None:
        self.sink, self.keyring, self.source = sink, keyring, source
        self._actor_of = actor
        self._actor: str | None = None

    @property
    def actor(self) -> str:
        if self._actor is None:
            self._actor = self._actor_of()
        return self._actor

    def _base(self, event: str, at: float, dry_run: bool) -> dict[str, Any]:
        return {
            "time": to_rfc3339(at),
            "event": event,
            "actor": self.actor,
            "keyring": self.keyring,
            "source": self.source,
            "dry_run": dry_run,
        }

    def plan(self, plan: Plan, *, dry_run: bool, version_id: str = "") -> None:
        for action in plan.actions:
            entry = self._base("action", plan.now, dry_run)
            doc = action.to_dict()
            entry.update(
                step=plan.step.value,
                action=doc["kind"],
                key_ids=doc["key_ids"],
                from_state=doc["from"],
                to_state=doc["to"],
                expires_at=doc["expires_at"],
                reason=doc["reason"] or plan.reason,
                overrides=doc["overrides"],
                version_id=version_id,
            )
            self.sink.record(entry)
        if plan.step.value == "emergency" and plan.changed:
            entry = self._base("emergency", plan.now, dry_run)
            entry.update(
                step=plan.step.value,
                reason=plan.reason,
                stops_verifying=[{"key_id": k, "at": to_rfc3339(t)} for k, t in plan.stops_verifying],
                new_primary=next((s.id for s in plan.after if s.state.value == "primary"), None),
                version_id=version_id,
            )
            self.sink.record(entry)

    def refusal(self, exc: RotationRefused, *, step: str, at: float, dry_run: bool, reason: str = "") -> None:
        entry = self._base("refusal", at, dry_run)
        entry.update(
            step=step,
            code=exc.code.value,
            message=str(exc),
            seconds_remaining=None if exc.seconds_remaining is None else round(exc.seconds_remaining, 3),
            reason=reason,
        )
        self.sink.record(entry)

    def failure(self, message: str, *, step: str, at: float, dry_run: bool, attempts: int) -> None:
        entry = self._base("error", at, dry_run)
        entry.update(step=step, message=message, attempts=attempts)
        self.sink.record(entry)
