"""Propagation hooks: after a keyring write, verifiers outside the gateway are made to reload it.

A Lambda function that verifies with a keyring loads it at cold start and keeps it for the life
of its execution environments; it has no refresh of its own. Changing the function's
configuration makes Lambda retire those environments: every invocation after the update runs in
a fresh one, which loads the keyring's new version. The change made is one environment variable,
``HMAC_GATEWAY_KEYRING_VERSION``, set to the version id just written (a version id is not a
secret; nothing else of the keyring is read or sent).

Invariants:
- ``notify_verifiers`` never raises for a failing function: each failure is one line (function
  name and AWS error *code*, never AWS's free text) in the list it returns, and the other
  functions are still updated;
- the function's other environment variables are kept (``UpdateFunctionConfiguration``
  replaces the whole environment, so it is read first and written back with ``RevisionId``: a
  concurrent change by someone else is retried on top of theirs, never overwritten);
- notifying twice with the same version changes nothing the second time (a retried step must not
  cause a second wave of cold starts);
- every call is bounded (timeouts, a fixed number of attempts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.keys.settings import KeyringSettings, SecretsManagerSettings

VERSION_VARIABLE = "HMAC_GATEWAY_KEYRING_VERSION"
_ATTEMPTS = 3  # a concurrent edit of the function's configuration (RevisionId moved): read again
_CLIENT_CONFIG = Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 3, "mode": "standard"})

log = logging.getLogger("hmac_gateway.rotation.hooks")


class LambdaClient(Protocol):
    """The two calls of boto3's Lambda client this module makes."""

    def get_function_configuration(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def update_function_configuration(self, **kwargs: Any) -> Mapping[str, Any]: ...


def lambda_client(settings: KeyringSettings) -> LambdaClient:
    """A Lambda client in the keyring's region (a Secrets Manager keyring's, else the AWS chain's).
    The endpoint is the standard chain's too (``AWS_ENDPOINT_URL_LAMBDA`` or ``AWS_ENDPOINT_URL``)."""
    source = settings.source
    region = source.region if isinstance(source, SecretsManagerSettings) else None
    profile = source.profile if isinstance(source, SecretsManagerSettings) else None
    session = boto3.session.Session(profile_name=profile, region_name=region)
    client: LambdaClient = session.client("lambda", config=_CLIENT_CONFIG)
    return client


def notify_verifiers(settings: KeyringSettings, version_id: str, *, client: LambdaClient | None = None) -> list[str]:
    """Force a cold start of every function in ``settings.propagation_lambdas``.

    Returns one error line per function that could not be updated (empty: all done or none
    configured). Call it after every successful keyring write, with the version written.
    """
    if not settings.propagation_lambdas:
        return []
    try:
        client = client or lambda_client(settings)
    except (BotoCoreError, ValueError) as exc:
        return [f"keyring {settings.name!r}: no Lambda client ({type(exc).__name__})"]
    errors = []
    for function in settings.propagation_lambdas:
        error = _force_cold_start(client, function, version_id)
        if error:
            errors.append(f"keyring {settings.name!r}: Lambda {function}: {error}")
            log.warning("propagation hook failed: keyring %s, Lambda %s: %s", settings.name, function, error)
        else:
            log.info("propagation hook: keyring %s, Lambda %s reloads version %s", settings.name, function, version_id)
    return errors


def _force_cold_start(client: LambdaClient, function: str, version_id: str) -> str | None:
    """None on success, else why not (an AWS error code or an exception class, never free text)."""
    for _ in range(_ATTEMPTS):
        try:
            current = client.get_function_configuration(FunctionName=function)
            variables = dict(current.get("Environment", {}).get("Variables", {}))
            if variables.get(VERSION_VARIABLE) == version_id:
                return None  # already told: a repeat must not cold-start the fleet again
            variables[VERSION_VARIABLE] = version_id
            # AWS always answers with a RevisionId; an emulator that does not gets a plain update
            revision = {"RevisionId": current["RevisionId"]} if current.get("RevisionId") else {}
            client.update_function_configuration(
                FunctionName=function, Environment={"Variables": variables}, **revision
            )
            return None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            if code != "PreconditionFailedException":  # anything but "someone else changed it first"
                return code
        except BotoCoreError as exc:
            return type(exc).__name__
    return f"its configuration kept changing under us ({_ATTEMPTS} attempts)"
