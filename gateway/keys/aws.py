"""The AWS Secrets Manager source: one secret holds one keyring document.

Invariants:
- every read asks for ``VersionStage="AWSCURRENT"`` explicitly (without it, some
  implementations answer with a stale version);
- a write is a compare-and-swap (SPEC section 4): ``PutSecretValue`` stores the new version under a
  unique client request token and a unique per-attempt staging label (never ``AWSCURRENT``), then
  ``UpdateSecretVersionStage`` moves ``AWSCURRENT`` to it *from the version the writer read*,
  which Secrets Manager refuses if someone else moved it first -> ``WriteConflict`` (unless
  ``AWSCURRENT`` sits on our new version: a retried move whose first answer was lost); the
  temporary label is removed either way, so a lost attempt leaves an unlabelled version that
  Secrets Manager deprecates on its own;
- calls are bounded: connect and read timeouts, and botocore's standard retry mode with a
  fixed number of attempts; the cache runs ``load`` off the event loop;
- errors become one ``SourceError`` line naming the secret and the AWS error *code* with a
  short explanation — never the secret value, and never AWS's free-text message (it can echo
  request details).
Credentials, region and role come from the standard AWS chain (environment, profile, role),
optionally narrowed by ``region``, ``profile`` and ``endpoint_url`` in the config.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from gateway.errors import SourceError, WriteConflict
from gateway.keys.sources import Document

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

_EXPLAIN = {
    "ResourceNotFoundException": "secret not found (check the name or ARN and the region)",
    "AccessDeniedException": "access denied (the role needs secretsmanager:GetSecretValue on this secret)",
    "AccessDenied": "access denied (the role needs secretsmanager:GetSecretValue on this secret)",
    "UnrecognizedClientException": "credentials rejected",
    "InvalidSignatureException": "credentials rejected",
    "ExpiredTokenException": "credentials expired",
    "ThrottlingException": "throttled by Secrets Manager",
    "DecryptionFailure": "KMS could not decrypt the secret (check the role's kms:Decrypt)",
    "InternalServiceError": "Secrets Manager internal error",
    "ServiceUnavailable": "Secrets Manager unavailable",
    "InvalidRequestException": "request refused (is the secret scheduled for deletion?)",
}
_WRITE_EXPLAIN = {
    **_EXPLAIN,
    "AccessDeniedException": "access denied (the writer needs secretsmanager:PutSecretValue and "
    "secretsmanager:UpdateSecretVersionStage on this secret)",
    "AccessDenied": "access denied (the writer needs secretsmanager:PutSecretValue and "
    "secretsmanager:UpdateSecretVersionStage on this secret)",
    "LimitExceededException": "too many versions of the secret (Secrets Manager's quota)",
    "EncryptionFailure": "KMS could not encrypt the new value (check the role's kms:GenerateDataKey)",
}
ORPHAN_LABEL_SECONDS = 600.0  # a staging label this old belongs to a writer that died
_STAGE_PREFIX = "hmac-gateway-write-"  # per-attempt staging labels; AWSCURRENT never goes here


class SecretsManagerSource:
    def __init__(
        self,
        name: str,
        secret_id: str,
        *,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 3,
    ) -> None:
        self.name = name
        self.secret_id = secret_id
        self.orphan_label_seconds = ORPHAN_LABEL_SECONDS
        self.region = region
        self.profile = profile
        self.endpoint_url = endpoint_url
        self.client_config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # total_max_attempts counts the first call too; botocore's max_attempts counts only retries
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        )
        self.description = f"aws-secretsmanager:{secret_id}"
        self._client: SecretsManagerClient | None = None
        self._lock = threading.Lock()

    def _get_client(self) -> SecretsManagerClient:
        with self._lock:  # boto3 clients are thread-safe; creating one is not
            if self._client is None:
                session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
                self._client = session.client(
                    "secretsmanager", endpoint_url=self.endpoint_url, config=self.client_config
                )
            return self._client

    def _fail(self, why: str) -> SourceError:
        return SourceError(f"{self.description}: {why}")

    def _raise(self, exc: Exception, explain: dict[str, str]) -> NoReturn:
        """One SourceError line for a boto3 failure: the AWS error code, never its free text."""
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            why = explain.get(code) or (f"HTTP {status}" if status else "request failed")
            raise self._fail(f"{code}: {why}") from None
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            raise self._fail(
                "no usable AWS credentials (standard chain: environment, profile, instance or task role)"
            ) from None
        if isinstance(exc, NoRegionError):
            raise self._fail("no AWS region configured (set region in the keyring or AWS_REGION)") from None
        if isinstance(exc, ProfileNotFound):
            raise self._fail(f"AWS profile {self.profile!r} not found") from None
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            raise self._fail("timed out waiting for Secrets Manager") from None
        if isinstance(exc, EndpointConnectionError):
            raise self._fail("cannot connect to the Secrets Manager endpoint") from None
        raise self._fail(f"{type(exc).__name__}") from None

    def load(self) -> Document:
        try:
            response = self._get_client().get_secret_value(SecretId=self.secret_id, VersionStage="AWSCURRENT")
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, _EXPLAIN)
        version_id = response.get("VersionId", "")
        if "SecretString" in response:
            data = response["SecretString"].encode("utf-8")
        elif "SecretBinary" in response:
            data = bytes(response["SecretBinary"])
        else:
            raise self._fail("the secret has no value")
        return Document(data=data, version_id=version_id)

    def write(self, document: bytes, *, expected_version: str) -> Document:
        if not expected_version:
            raise self._fail("a write needs the version it replaces (the secret must exist)")
        client = self._get_client()
        label = _STAGE_PREFIX + uuid.uuid4().hex
        try:
            value = document.decode("utf-8")
        except UnicodeDecodeError:
            value = None
        try:
            if value is not None:
                put = client.put_secret_value(
                    SecretId=self.secret_id,
                    SecretString=value,
                    ClientRequestToken=str(uuid.uuid4()),
                    VersionStages=[label],
                )
            else:
                put = client.put_secret_value(
                    SecretId=self.secret_id,
                    SecretBinary=document,
                    ClientRequestToken=str(uuid.uuid4()),
                    VersionStages=[label],
                )
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, _WRITE_EXPLAIN)
        new_version = put["VersionId"]
        try:
            client.update_secret_version_stage(
                SecretId=self.secret_id,
                VersionStage="AWSCURRENT",
                MoveToVersionId=new_version,
                RemoveFromVersionId=expected_version,
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code != "InvalidParameterException":
                self._raise(exc, _WRITE_EXPLAIN)
            # AWSCURRENT is no longer on the version we read. Either someone else moved it, or a
            # retry of our own move found it done (the first answer was lost): only we know the
            # new version's id, so AWSCURRENT on it means our write won.
            if self.load().version_id != new_version:
                raise WriteConflict(f"{self.description}: the keyring changed since it was read") from None
        except BotoCoreError as exc:
            self._raise(exc, _WRITE_EXPLAIN)
        finally:
            self._drop_label(label, new_version)
        self._sweep_orphan_labels(new_version)
        return Document(data=document, version_id=new_version)

    def _sweep_orphan_labels(self, written: str) -> None:
        """Remove staging labels a writer that died between its put and its stage move left on
        its version. Only labels older than ``orphan_label_seconds``: a younger one may belong to a
        writer still at work, whose move must find its version labelled. Best effort, like
        ``_drop_label``: the keyring is valid either way."""
        with contextlib.suppress(ClientError, BotoCoreError):
            versions = self._get_client().list_secret_version_ids(SecretId=self.secret_id)["Versions"]
            cutoff = time.time() - self.orphan_label_seconds
            for version in versions:
                created = version.get("CreatedDate")
                if version["VersionId"] == written or created is None or created.timestamp() > cutoff:
                    continue
                for stage in version.get("VersionStages", []):
                    if stage.startswith(_STAGE_PREFIX):
                        self._drop_label(stage, version["VersionId"])

    def _drop_label(self, label: str, version_id: str) -> None:
        # Best effort: a label left behind is harmless (it names no stage anyone reads), and the
        # write's outcome must not be masked by a failed clean-up.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._get_client().update_secret_version_stage(
                SecretId=self.secret_id, VersionStage=label, RemoveFromVersionId=version_id
            )
