"""The Secrets Manager rotation Lambda, called as AWS calls it, against moto's server over HTTP.

Secrets Manager begins a rotation by attaching AWSPENDING to a new, empty version (the event's
token) and then invokes the function once per step. moto's RotateSecret would invoke the function
in Docker, so ``begin_rotation`` does that first part itself on moto's in-process backend; every
call the handler makes goes over HTTP through the fault injector with real boto3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.backends import get_backend

from gateway.errors import ConfigError
from gateway.keys.aws import SecretsManagerSource
from gateway.keys.cache import KeyringCache
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring, KeyState
from gateway.keys.settings import KeyringSettings, SecretsManagerSettings
from gateway.rotation import lambda_handler
from gateway.rotation.lambda_handler import BASE_PREFIX, RotationStepFailed, Rotator, Target
from gateway.rotation.policy import Policy
from tests.helpers import FakeClock, random_secret
from tests.moto_faults import Fault, FaultyMotoServer

POLICY = Policy(propagation_delay=120, overlap=600, rotation_period=3600, clock_skew=60)
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
ACCOUNT, REGION = "123456789012", "us-east-1"  # moto's defaults


def begin_rotation(name: str, *, enabled: bool = True) -> str:
    """What Secrets Manager does before it calls createSecret: rotation configured, and a new
    empty version (the token) carrying AWSPENDING."""
    secret = get_backend("secretsmanager")[ACCOUNT][REGION].secrets[name]
    token = str(uuid.uuid4())
    secret.remove_version_stages_from_old_versions(["AWSPENDING"])
    secret.versions[token] = {"createdate": int(time.time()), "version_id": token, "version_stages": ["AWSPENDING"]}
    secret.rotation_requested, secret.rotation_enabled = True, enabled
    secret.rotation_lambda_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:hmac-gateway-rotation"
    secret.last_rotation_date = int(time.time())
    return token


class Notified:
    """Stands in for the propagation hooks (tests/test_hooks.py runs the real ones)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def __call__(self, settings: KeyringSettings, version_id: str) -> list[str]:
        self.calls.append((settings.name, version_id))
        return list(self.errors)


class Rig:
    def __init__(self, moto: FaultyMotoServer, sm: Any, document: dict[str, Any]) -> None:
        self.moto, self.sm = moto, sm
        self.name = f"hmac-gateway/rotation/{uuid.uuid4().hex[:8]}"
        sm.create_secret(Name=self.name, SecretString=json.dumps(document))
        self.clock = FakeClock(time.time())
        self.notified = Notified()
        self.settings = KeyringSettings("ring", SecretsManagerSettings(self.name, region=REGION))
        # the function's own client, retrying as the Lambda's does (a fixed number of attempts)
        client = boto3.client(
            "secretsmanager",
            endpoint_url=moto.endpoint,
            region_name=REGION,
            config=Config(retries={"total_max_attempts": 2, "mode": "standard"}),
        )
        self.rotator = Rotator(
            client, lambda _meta: Target(self.settings, POLICY), clock=self.clock, notify=self.notified
        )

    def begin(self, *, enabled: bool = True) -> str:
        return begin_rotation(self.name, enabled=enabled)

    def step(self, token: str, step: str) -> dict[str, Any]:
        return self.rotator.run({"SecretId": self.name, "ClientRequestToken": token, "Step": step})

    def rotate(self) -> str:
        token = self.begin()
        for step in STEPS:
            self.step(token, step)
        return token

    def stages(self) -> dict[str, list[str]]:
        return dict(self.sm.describe_secret(SecretId=self.name)["VersionIdsToStages"])

    def current(self) -> tuple[str, str]:
        answer = self.sm.get_secret_value(SecretId=self.name, VersionStage="AWSCURRENT")
        return answer["VersionId"], answer["SecretString"]

    async def gateway_view(self) -> Keyring:
        """What a gateway's keyring cache loads from the secret."""
        source = SecretsManagerSource("ring", self.name, region=REGION, endpoint_url=self.moto.endpoint)
        cache = KeyringCache("ring", source)
        assert await cache.refresh()
        assert cache.keyring is not None
        return cache.keyring


def states(keyring: Keyring) -> dict[str, str]:
    return {k.id: k.state.value for k in keyring.keys}


async def test_four_steps_upgrade_a_flat_map_and_add_a_pending_key_a_gateway_loads(
    moto: FaultyMotoServer, sm: Any
) -> None:
    old = random_secret()
    rig = Rig(moto, sm, {"key-v1": old})
    original, _ = rig.current()
    token = rig.rotate()

    assert rig.current()[0] == token
    stages = rig.stages()
    assert "AWSPREVIOUS" in stages[original]
    assert not any(label.startswith(BASE_PREFIX) for labels in stages.values() for label in labels)
    keyring = await rig.gateway_view()
    assert keyring.format == "lifecycle" and keyring.version_id == token
    assert keyring.signing_key_id == "key-v1" and keyring.signing_key.secret == old
    (new,) = [k for k in keyring.keys if k.state is KeyState.PENDING]
    assert new.created_at == pytest.approx(rig.clock.now, abs=1)
    assert rig.notified.calls == [("ring", token)]  # after AWSCURRENT moved, with the new version


async def test_scheduled_rotations_walk_add_promote_retire_and_quiet_runs_copy_the_document(
    moto: FaultyMotoServer, sm: Any
) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    rig.rotate()  # add
    new = next(k.id for k in (await rig.gateway_view()).keys if k.state is KeyState.PENDING)

    rig.clock.advance(60)  # not yet: the pending key has not waited the propagation delay
    before_version, before_doc = rig.current()
    quiet = rig.rotate()
    assert rig.current() == (quiet, before_doc)  # byte for byte, under a new version
    assert quiet != before_version
    assert rig.notified.calls[-1][1] != quiet  # nothing changed: no verifier is told to reload

    rig.clock.advance(POLICY.propagation_delay)
    rig.rotate()  # promote
    keyring = await rig.gateway_view()
    assert keyring.signing_key_id == new and states(keyring)["key-v1"] == "retiring"

    rig.clock.advance(POLICY.overlap + 1)
    rig.rotate()  # retire
    keyring = await rig.gateway_view()
    assert states(keyring) == {new: "primary"}


async def test_every_step_repeated_changes_nothing_more(moto: FaultyMotoServer, sm: Any) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    token = rig.begin()
    rig.step(token, "createSecret")
    pending = sm.get_secret_value(SecretId=rig.name, VersionId=token)["SecretString"]
    for step in STEPS:
        rig.step(token, step)
        rig.step(token, step)
    assert rig.current() == (token, pending)  # the second createSecret did not re-plan (no second new key)
    assert len(parse_keyring("ring", pending).keys) == 2
    # A repeated finishSecret asks the hooks again with the same version (they skip functions
    # already told: tests/test_hooks.py), so a retry after a failed hook reaches every verifier.
    assert rig.notified.calls == [("ring", token), ("ring", token)]


async def test_a_failed_step_is_retried_to_the_same_end(moto: FaultyMotoServer, sm: Any) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    token = rig.begin()
    moto.injector.inject(Fault("error500", action="PutSecretValue", times=2))  # both attempts
    with pytest.raises(RotationStepFailed, match="InternalServiceError"):
        rig.step(token, "createSecret")
    rig.step(token, "createSecret")
    rig.step(token, "setSecret")
    rig.step(token, "testSecret")
    # The move is applied but its answer is lost, and the client's own retry fails too: AWS
    # retries finishSecret, which finds the move done.
    moto.injector.inject(Fault("lost_answer", action="UpdateSecretVersionStage", times=1))
    moto.injector.inject(Fault("error500", action="UpdateSecretVersionStage", times=1))
    with pytest.raises(RotationStepFailed):
        rig.step(token, "finishSecret")
    rig.step(token, "finishSecret")
    assert rig.current()[0] == token
    keyring = await rig.gateway_view()
    assert sorted(k.state.value for k in keyring.keys) == ["pending", "primary"]


async def test_failed_hooks_fail_the_step_and_its_retry_runs_them_again(moto: FaultyMotoServer, sm: Any) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    token = rig.begin()
    for step in STEPS[:3]:
        rig.step(token, step)
    rig.notified.errors = ["keyring 'ring': Lambda verifier: ResourceNotFoundException"]
    with pytest.raises(RotationStepFailed, match="propagation hooks failed"):
        rig.step(token, "finishSecret")
    assert rig.current()[0] == token  # the keyring is written either way
    rig.notified.errors = []
    rig.step(token, "finishSecret")
    assert rig.notified.calls == [("ring", token), ("ring", token)]


async def test_finish_never_overwrites_another_writer_and_the_next_rotation_plans_from_it(
    moto: FaultyMotoServer, sm: Any
) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    token = rig.begin()
    for step in STEPS[:3]:
        rig.step(token, step)
    # `hmac-gateway rotate` (or a person) writes in between, by compare-and-swap
    source = SecretsManagerSource("ring", rig.name, region=REGION, endpoint_url=moto.endpoint)
    read = source.load()
    rival = source.write(
        json.dumps({"key-v1": json.loads(read.data)["key-v1"], "key-v2": random_secret()}).encode(),
        expected_version=read.version_id,
    )
    with pytest.raises(RotationStepFailed, match="moved since createSecret"):
        rig.step(token, "finishSecret")
    assert rig.current()[0] == rival.version_id
    assert rig.stages()[token] == []  # abandoned: no AWSPENDING left to block the next rotation
    with pytest.raises(RotationStepFailed, match="not AWSPENDING"):
        rig.step(token, "finishSecret")  # AWS's own retry of the abandoned rotation

    rig.rotate()
    keyring = await rig.gateway_view()
    assert {"key-v1", "key-v2"} <= set(states(keyring))  # the rival's key survived


async def test_a_pending_key_finished_too_late_is_abandoned(moto: FaultyMotoServer, sm: Any) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    original = rig.current()
    token = rig.begin()
    for step in STEPS[:3]:
        rig.step(token, step)
    rig.clock.advance(lambda_handler.MAX_FINISH_DELAY + 5)  # e.g. testSecret failed and was retried much later
    with pytest.raises(RotationStepFailed, match="planned more than"):
        rig.step(token, "finishSecret")
    assert rig.current() == original


async def test_aws_preconditions_are_checked_before_anything_is_read_or_written(
    moto: FaultyMotoServer, sm: Any
) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    token = rig.begin(enabled=False)
    with pytest.raises(RotationStepFailed, match="not enabled for rotation"):
        rig.step(token, "createSecret")
    token = rig.begin()
    with pytest.raises(RotationStepFailed, match="no stage for rotation"):
        rig.step(str(uuid.uuid4()), "createSecret")
    with pytest.raises(RotationStepFailed, match="unknown step"):
        rig.step(token, "dropSecret")
    with pytest.raises(RotationStepFailed, match="no ClientRequestToken"):
        rig.rotator.run({"SecretId": rig.name, "Step": "createSecret"})
    with pytest.raises(RotationStepFailed, match="not created by this rotation function"):
        rig.step(token, "testSecret")  # a pending version this function never planned
    assert rig.stages()[token] == ["AWSPENDING"]


async def test_test_secret_refuses_a_pending_document_the_gateway_cannot_parse(moto: FaultyMotoServer, sm: Any) -> None:
    secret = random_secret()
    rig = Rig(moto, sm, {"key-v1": secret})
    base, _ = rig.current()
    bad = {"key-v2": random_secret()}  # parses, but loses key-v1, which still verifies
    for document, error in ((b"{not json", "not valid JSON"), (json.dumps(bad), "would lose key key-v1")):
        token = rig.begin()
        sm.put_secret_value(
            SecretId=rig.name,
            ClientRequestToken=token,
            SecretString=document if isinstance(document, str) else document.decode(),
            VersionStages=["AWSPENDING", BASE_PREFIX + base],
        )
        with pytest.raises(Exception, match=error):
            rig.step(token, "testSecret")
        with pytest.raises(Exception, match=error):
            rig.step(token, "finishSecret")
    assert rig.current()[0] == base
    assert json.loads(rig.current()[1]) == {"key-v1": secret}


def test_handler_entry_point_reads_the_gateways_config(
    moto: FaultyMotoServer, sm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"hmac-gateway/entry/{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps({"key-v1": random_secret()}))
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[keyrings.partner]
source = "aws-secretsmanager"
secret_id = "{name}"
region = "{REGION}"

[listeners.verify]
port = 8081

[[routes]]
name = "in"
listener = "verify"
mode = "verify"
upstream = "http://127.0.0.1:9"
keyring = "partner"
"""
    )
    monkeypatch.setenv("HMAC_GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)  # boto3's standard endpoint variable
    monkeypatch.setattr(lambda_handler, "_rotator", None)
    token = begin_rotation(name)
    arn = sm.describe_secret(SecretId=name)["ARN"]  # AWS sends the ARN
    for step in STEPS:
        lambda_handler.handler({"SecretId": arn, "ClientRequestToken": token, "Step": step}, None)
    answer = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    assert answer["VersionId"] == token
    assert parse_keyring("partner", answer["SecretString"]).format == "lifecycle"


def test_packaging_script_builds_a_zip_whose_handler_imports(tmp_path: Path) -> None:
    """The README's packaging step, without dependencies (those come from the index at release)."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "lambda.zip"
    subprocess.run(
        [str(root / "scripts" / "build-lambda"), "--no-deps", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unpacked")
    assert "gateway/rotation/lambda_handler.py" in names
    probe = "import gateway.rotation.lambda_handler as m; print(m.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path / "unpacked",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "unpacked")},
    )
    assert result.stdout.strip().startswith(str(tmp_path / "unpacked")), result.stderr


async def test_a_lost_answer_to_the_move_is_absorbed_by_the_clients_own_retry(moto: FaultyMotoServer, sm: Any) -> None:
    rig = Rig(moto, sm, {"key-v1": random_secret()})
    token = rig.begin()
    for step in STEPS[:3]:
        rig.step(token, step)
    # applied, answered 500; the retry's "AWSCURRENT is not on the base" is our own move, not a rival's
    moto.injector.inject(Fault("lost_answer", action="UpdateSecretVersionStage", times=1))
    rig.step(token, "finishSecret")
    assert rig.current()[0] == token and "AWSPENDING" in rig.stages()[token]
    assert rig.notified.calls == [("ring", token)]


def test_the_keyring_is_found_by_the_rotated_secret_never_lent_from_another(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        """
[keyrings.a]
source = "aws-secretsmanager"
secret_id = "hmac/a"
refresh_interval_seconds = 10
propagation_lambdas = ["verifier-a"]

[keyrings.b]
source = "aws-secretsmanager"
secret_id = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hmac/b-AbCdEf"

[listeners.v]
port = 8081

[[routes]]
name = "in"
listener = "v"
mode = "verify"
upstream = "http://127.0.0.1:9"
keyring = "a"
"""
    )
    arn_a = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hmac/a-XyZ123"
    target = lambda_handler.resolver_from_config(str(config))({"ARN": arn_a, "Name": "hmac/a"})
    assert target.settings.name == "a" and target.settings.propagation_lambdas == ("verifier-a",)
    assert target.policy.propagation_delay == 82  # from a's refresh settings: ceil(10 s * 1.1 * 2 + 60 s)
    arn_b = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hmac/b-AbCdEf"
    assert lambda_handler.resolver_from_config(str(config))({"ARN": arn_b, "Name": "hmac/b"}).settings.name == "b"
    with pytest.raises(ConfigError, match="no keyring 'a' with source aws-secretsmanager"):
        lambda_handler.resolver_from_config(str(config), "a")({"ARN": arn_b, "Name": "hmac/b"})
