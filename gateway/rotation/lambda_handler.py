"""AWS Secrets Manager rotation Lambda: AWS's four steps drive the same planner as ``rotate``.

Secrets Manager starts a rotation by attaching ``AWSPENDING`` to a new, empty version whose id is
the event's ``ClientRequestToken``, then calls ``createSecret``, ``setSecret``, ``testSecret`` and
``finishSecret`` with it, retrying a failed step. Each step here:

- ``createSecret``: reads ``AWSCURRENT``, plans ``advance`` (as far as the clock allows: retire,
  promote, or add) and puts the planned document under the token as ``AWSPENDING``, together with
  the label ``hmac-gateway-base-<current version>`` that remembers what was planned from. A token
  whose version already holds a value is left alone (a retried step). **A plan that changes
  nothing still puts a version**: AWS requires a pending value, and failing the step instead would
  turn every quiet scheduled run into a failed rotation. That version is the current document byte
  for byte; finishing it moves only the version id (gateways re-read an identical keyring) and
  runs no hooks.
- ``setSecret``: nothing to set: the keyring *is* the secret, and a verifier told to reload now
  would read the old ``AWSCURRENT``; the propagation hooks run in ``finishSecret`` instead.
- ``testSecret``: parses ``AWSPENDING`` with the gateway's own parser and checks it loses no key
  of the base version that still verifies.
- ``finishSecret``: moves ``AWSCURRENT`` to the token's version *from the base version only*
  (compare-and-swap: Secrets Manager refuses the move if another writer, e.g. ``hmac-gateway
  rotate``, moved it since ``createSecret``). Then the propagation hooks run.

Invariants:
- nothing a rival wrote is ever overwritten: a rotation whose base is no longer current, or whose
  new pending key would become visible more than ``MAX_FINISH_DELAY`` after it was stamped (its
  propagation delay counts from ``created_at``), is abandoned: ``AWSPENDING`` and the base label
  are removed from the token's version and the step fails; the next scheduled rotation plans
  afresh from the current version;
- every step first checks what AWS's templates check: rotation enabled, the token is a version of
  the secret, and it carries ``AWSPENDING`` (a token already ``AWSCURRENT`` is done: ``finishSecret``
  only re-runs the hooks, which change nothing if they already ran);
- no secret in a log line or an exception: AWS errors by code, keys by id.

Configuration (environment of the Lambda): ``HMAC_GATEWAY_CONFIG`` names the gateways' TOML config
(packaged with the function), whose keyring with this secret's ``secret_id`` gives the encoding,
the refresh settings (hence the propagation delay) and ``propagation_lambdas``;
``HMAC_GATEWAY_KEYRING`` picks one by name when several keyrings name the secret.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway import config as config_mod
from gateway.clock import Clock, system_clock
from gateway.errors import ConfigError, GatewayError
from gateway.keys.formats import dump_lifecycle, parse_keyring
from gateway.keys.model import Keyring, KeyState
from gateway.keys.settings import KeyringSettings, SecretsManagerSettings
from gateway.rotation import hooks
from gateway.rotation.lifecycle import apply, plan
from gateway.rotation.policy import Policy, Request, Step
from gateway.rotation.settings import policy_for

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

PENDING, CURRENT = "AWSPENDING", "AWSCURRENT"
BASE_PREFIX = "hmac-gateway-base-"
MAX_FINISH_DELAY = 60.0  # the margin propagation_delay_for adds for write latency
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")

log = logging.getLogger("hmac_gateway.rotation.lambda")


class RotationStepFailed(GatewayError):
    """A rotation step cannot (or must not) complete; AWS records the rotation as failed."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a rotation needs to know about the secret's keyring."""

    settings: KeyringSettings
    policy: Policy


Resolver = Callable[[Mapping[str, Any]], Target]
"""From DescribeSecret's answer (``ARN``, ``Name``) to the keyring it holds."""


def resolver_from_config(path: str, keyring: str | None = None) -> Resolver:
    cfg = config_mod.load(config_mod.resolve_path(path))

    def resolve(secret: Mapping[str, Any]) -> Target:
        names = {str(secret.get("ARN", "")), str(secret.get("Name", ""))} - {""}
        for name, kc in cfg.keyrings.items():
            source = kc.settings.source
            # HMAC_GATEWAY_KEYRING picks among several keyrings on one secret; it never lends
            # another secret's keyring (its refresh settings, its hooks) to this one
            if keyring in (None, name) and isinstance(source, SecretsManagerSettings) and source.secret_id in names:
                return Target(kc.settings, policy_for(kc.settings))
        which = f"keyring {keyring!r} " if keyring else "keyring "
        raise ConfigError([f"{path}: no {which}with source aws-secretsmanager and secret_id {sorted(names)[-1]!r}"])

    return resolve


class Rotator:
    """The four steps, against one Secrets Manager client, with an injected clock."""

    def __init__(
        self,
        client: SecretsManagerClient,
        resolve: Resolver,
        *,
        clock: Clock = system_clock,
        notify: Callable[[KeyringSettings, str], list[str]] = hooks.notify_verifiers,
    ) -> None:
        self.client, self.resolve, self.clock, self.notify = client, resolve, clock, notify

    def run(self, event: Mapping[str, Any]) -> dict[str, Any]:
        try:
            arn, token, step = str(event["SecretId"]), str(event["ClientRequestToken"]), str(event["Step"])
        except KeyError as exc:
            raise RotationStepFailed(f"the event has no {exc.args[0]}") from None
        if step not in STEPS:
            raise RotationStepFailed(f"unknown step {step!r}")
        try:
            return self._run(arn, token, step)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            raise RotationStepFailed(f"{step} on {arn}: {code}") from None
        except BotoCoreError as exc:
            raise RotationStepFailed(f"{step} on {arn}: {type(exc).__name__}") from None

    def _run(self, arn: str, token: str, step: str) -> dict[str, Any]:
        metadata = self.client.describe_secret(SecretId=arn)
        if not metadata.get("RotationEnabled"):
            raise RotationStepFailed(f"secret {arn} is not enabled for rotation")
        stages = metadata.get("VersionIdsToStages", {})
        if token not in stages:
            raise RotationStepFailed(f"version {token} of secret {arn} has no stage for rotation")
        target = self.resolve(metadata)
        if CURRENT in stages[token]:
            log.info("%s: version %s is already AWSCURRENT", step, token)
            if step == "finishSecret":
                self._hooks(target, arn, token, stages)
            return {"step": step, "done": True}
        if PENDING not in stages[token]:
            raise RotationStepFailed(f"version {token} of secret {arn} is not AWSPENDING")
        base = next((s[len(BASE_PREFIX) :] for s in stages[token] if s.startswith(BASE_PREFIX)), None)
        if step == "createSecret":
            return self._create(arn, token, target)
        if base is None:
            raise RotationStepFailed(f"version {token} of secret {arn} was not created by this rotation function")
        if step == "setSecret":
            return {"step": step, "done": True}
        if step == "testSecret":
            self._test(arn, token, base, target)
            return {"step": step, "done": True}
        return self._finish(arn, token, base, target)

    # -- steps -------------------------------------------------------------------------------

    def _read(self, arn: str, **version: str) -> tuple[bytes, str]:
        answer = self.client.get_secret_value(SecretId=arn, **version)
        if "SecretString" in answer:
            return answer["SecretString"].encode(), answer["VersionId"]
        return bytes(answer["SecretBinary"]), answer["VersionId"]

    def _create(self, arn: str, token: str, target: Target) -> dict[str, Any]:
        try:
            self._read(arn, VersionId=token, VersionStage=PENDING)
            log.info("createSecret: version %s already holds the planned keyring", token)
            return {"step": "createSecret", "done": True}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        data, base = self._read(arn, VersionStage=CURRENT)
        settings, now = target.settings, self.clock()
        keyring = parse_keyring(settings.name, data, encoding=settings.encoding, version_id=base)
        result = plan(keyring, now, target.policy, Request(Step.ADVANCE, reason="Secrets Manager rotation"))
        log.info("createSecret: %s", str(result).replace("\n", "; "))
        document = dump_lifecycle(apply(keyring, result)) if result.changed else data.decode()
        self.client.put_secret_value(
            SecretId=arn, ClientRequestToken=token, SecretString=document, VersionStages=[PENDING, BASE_PREFIX + base]
        )
        return {"step": "createSecret", "done": True, "plan": result.to_dict()}

    def _test(self, arn: str, token: str, base: str, target: Target) -> Keyring:
        settings, now = target.settings, self.clock()
        pending = parse_keyring(
            settings.name,
            self._read(arn, VersionId=token, VersionStage=PENDING)[0],
            encoding=settings.encoding,
            version_id=token,
        )
        before = parse_keyring(settings.name, self._read(arn, VersionId=base)[0], encoding=settings.encoding)
        for key in before.keys:
            kept = pending.get(key.id)
            if key.verifies_at(now) and (kept is None or kept.material != key.material):
                raise RotationStepFailed(
                    f"testSecret: the pending keyring would lose key {key.id}, which still verifies"
                )
        return pending

    def _finish(self, arn: str, token: str, base: str, target: Target) -> dict[str, Any]:
        pending = self._test(arn, token, base, target)
        before = parse_keyring(
            target.settings.name, self._read(arn, VersionId=base)[0], encoding=target.settings.encoding
        )
        now = self.clock()
        late = [
            k.id
            for k in pending.keys
            if k.state is KeyState.PENDING
            and before.get(k.id) is None
            and now - (k.created_at if k.created_at is not None else -math.inf) > MAX_FINISH_DELAY
        ]
        if late:
            self._abandon(arn, token, base)
            raise RotationStepFailed(
                f"finishSecret: new key {late[0]} was planned more than {MAX_FINISH_DELAY:g} s ago; it would sign "
                "before every verifier holds it: rotation abandoned, the next one plans again"
            )
        try:
            self.client.update_secret_version_stage(
                SecretId=arn, VersionStage=CURRENT, MoveToVersionId=token, RemoveFromVersionId=base
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidParameterException":
                raise
            if self._current(arn) != token:  # not a retry of our own move whose answer was lost
                self._abandon(arn, token, base)
                raise RotationStepFailed(
                    f"finishSecret: AWSCURRENT of {arn} moved since createSecret (another writer): rotation "
                    "abandoned, nothing overwritten; the next one plans from the new version"
                ) from None
        self._drop(arn, BASE_PREFIX + base, token)
        stages = self.client.describe_secret(SecretId=arn).get("VersionIdsToStages", {})
        self._hooks(target, arn, token, stages)
        return {"step": "finishSecret", "done": True}

    # -- helpers -----------------------------------------------------------------------------

    def _hooks(self, target: Target, arn: str, token: str, stages: Mapping[str, list[str]]) -> None:
        previous = next((v for v, s in stages.items() if "AWSPREVIOUS" in s), None)
        if previous is not None and self._read(arn, VersionId=previous)[0] == self._read(arn, VersionId=token)[0]:
            return  # a rotation that changed nothing: no verifier needs to reload
        errors = self.notify(target.settings, token)
        if errors:
            raise RotationStepFailed("finishSecret: keyring written; propagation hooks failed: " + "; ".join(errors))

    def _current(self, arn: str) -> str | None:
        stages = self.client.describe_secret(SecretId=arn).get("VersionIdsToStages", {})
        return next((v for v, s in stages.items() if CURRENT in s), None)

    def _abandon(self, arn: str, token: str, base: str) -> None:
        self._drop(arn, PENDING, token)
        self._drop(arn, BASE_PREFIX + base, token)

    def _drop(self, arn: str, label: str, version: str) -> None:
        self.client.update_secret_version_stage(SecretId=arn, VersionStage=label, RemoveFromVersionId=version)


_rotator: Rotator | None = None


def _default_rotator() -> Rotator:
    """Built once per execution environment (a cold start), reused by warm invocations."""
    global _rotator  # noqa: PLW0603 - Lambda keeps module state between warm invocations on purpose
    if _rotator is None:
        # Lambda's runtime leaves our loggers at WARNING: each step's plan belongs in CloudWatch
        logging.getLogger("hmac_gateway.rotation").setLevel(logging.INFO)
        path = os.environ.get(config_mod.CONFIG_ENV)
        if not path:
            raise ConfigError([f"${config_mod.CONFIG_ENV} must name the gateways' config file"])
        client_config = Config(
            connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 3, "mode": "standard"}
        )
        client = boto3.session.Session().client("secretsmanager", config=client_config)
        _rotator = Rotator(client, resolver_from_config(path, os.environ.get("HMAC_GATEWAY_KEYRING") or None))
    return _rotator


def handler(event: Mapping[str, Any], context: object) -> dict[str, Any]:
    """The Lambda entry point (``gateway.rotation.lambda_handler.handler``)."""
    try:
        return _default_rotator().run(event)
    except GatewayError as exc:  # refusals, unreadable keyrings, config: one line, no traceback
        log.error("rotation step failed: %s", exc)
        raise RotationStepFailed(str(exc)) from None
