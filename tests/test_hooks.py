"""Propagation hooks against moto's Lambda over HTTP: a function is created from a real zip (no
Docker needed: moto only runs code on Invoke, which we never call), its configuration changed
by ``notify_verifiers`` exactly as AWS's UpdateFunctionConfiguration would be."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from gateway.keys.settings import FileSourceSettings, KeyringSettings, SecretsManagerSettings
from gateway.rotation.hooks import VERSION_VARIABLE, notify_verifiers
from tests.moto_faults import AWS_ENV, FaultyMotoServer

REGION = "us-east-1"


@pytest.fixture
def lam(moto: FaultyMotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return boto3.client("lambda", endpoint_url=moto.endpoint, region_name=REGION)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("verifier.py", "def handler(event, context):\n    return {}\n")
    return buffer.getvalue()


def make_function(moto: FaultyMotoServer, lam: Any, variables: dict[str, str]) -> str:
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name=REGION)
    role_name = f"verifier-{uuid.uuid4().hex[:8]}"
    role = iam.create_role(
        RoleName=role_name,
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    name = f"verifier-{uuid.uuid4().hex[:8]}"
    lam.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="verifier.handler",
        Code={"ZipFile": _zip()},
        Environment={"Variables": variables},
    )
    return name


def environment(lam: Any, name: str) -> dict[str, str]:
    return dict(lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"])


def ring(*functions: str) -> KeyringSettings:
    return KeyringSettings(
        "partner", SecretsManagerSettings("hmac/partner", region=REGION), propagation_lambdas=functions
    )


class Recording:
    """The Lambda client, counting the updates it is asked to make."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.updates: list[str] = []

    def get_function_configuration(self, **kwargs: Any) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self.client.get_function_configuration(**kwargs)
        return answer

    def update_function_configuration(self, **kwargs: Any) -> Mapping[str, Any]:
        self.updates.append(kwargs["FunctionName"])
        answer: Mapping[str, Any] = self.client.update_function_configuration(**kwargs)
        return answer


def test_every_listed_function_gets_the_new_version_and_keeps_its_other_variables(
    moto: FaultyMotoServer, lam: Any
) -> None:
    first = make_function(moto, lam, {"KEYRING_SECRET_ID": "hmac/partner", "LOG_LEVEL": "info"})
    second = make_function(moto, lam, {})
    client = Recording(lam)

    assert notify_verifiers(ring(first, second), "v-1", client=client) == []
    assert environment(lam, first) == {
        "KEYRING_SECRET_ID": "hmac/partner",
        "LOG_LEVEL": "info",
        VERSION_VARIABLE: "v-1",
    }
    assert environment(lam, second) == {VERSION_VARIABLE: "v-1"}
    assert client.updates == [first, second]

    # told again about the same version (a retried step): no second wave of cold starts
    assert notify_verifiers(ring(first, second), "v-1", client=client) == []
    assert client.updates == [first, second]

    assert notify_verifiers(ring(first, second), "v-2", client=client) == []
    assert environment(lam, first)[VERSION_VARIABLE] == "v-2"


def test_one_failing_function_is_reported_and_never_stops_the_others(moto: FaultyMotoServer, lam: Any) -> None:
    present = make_function(moto, lam, {})
    errors = notify_verifiers(ring("no-such-verifier", present), "v-9", client=lam)
    assert errors == ["keyring 'partner': Lambda no-such-verifier: ResourceNotFoundException"]  # the code, no free text
    assert environment(lam, present)[VERSION_VARIABLE] == "v-9"


def test_no_functions_configured_means_no_aws_call(tmp_path: Path) -> None:
    settings = KeyringSettings("local", FileSourceSettings(tmp_path / "ring.json"))

    class Refuses:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"no call expected, got {name}")

    assert notify_verifiers(settings, "v-1", client=Refuses()) == []  # type: ignore[arg-type]


def test_the_client_comes_from_the_standard_aws_chain(
    moto: FaultyMotoServer, lam: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_function(moto, lam, {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)  # what a deployment sets only for tests or VPC endpoints
    assert notify_verifiers(ring(name), "v-3") == []
    assert environment(lam, name)[VERSION_VARIABLE] == "v-3"


def test_a_concurrent_configuration_change_is_retried_on_top_never_overwritten() -> None:
    """moto neither returns nor checks RevisionId, so this one runs against a scripted client
    answering as AWS does when someone else changed the function between our read and write."""

    class Racing:
        def __init__(self, losses: int) -> None:
            self.losses, self.revision, self.env = losses, "r1", {"OTHER": "x"}
            self.sent: list[dict[str, str]] = []

        def get_function_configuration(self, **kwargs: Any) -> Mapping[str, Any]:
            return {"RevisionId": self.revision, "Environment": {"Variables": dict(self.env)}}

        def update_function_configuration(self, **kwargs: Any) -> Mapping[str, Any]:
            if self.losses:
                self.losses -= 1
                self.revision, self.env = self.revision + "+", {**self.env, "THEIRS": self.revision}
                error = {"Error": {"Code": "PreconditionFailedException", "Message": "revision moved"}}
                raise ClientError(error, "UpdateFunctionConfiguration")  # type: ignore[arg-type]
            assert kwargs["RevisionId"] == self.revision
            self.env = kwargs["Environment"]["Variables"]
            self.sent.append(self.env)
            return {}

    once = Racing(losses=1)
    assert notify_verifiers(ring("f"), "v-5", client=once) == []  # type: ignore[arg-type]
    assert once.env == {"OTHER": "x", "THEIRS": "r1", VERSION_VARIABLE: "v-5"}  # their change kept
    always = Racing(losses=10)
    (error,) = notify_verifiers(ring("f"), "v-5", client=always)
    assert "kept changing" in error and always.sent == []
