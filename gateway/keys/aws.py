"""The AWS Secrets Manager source: one secret holds one keyring document.

Invariants:
- every read asks for ``VersionStage="AWSCURRENT"`` explicitly (without it, some
  implementations answer with a stale version);
- calls are bounded: connect and read timeouts, and botocore's standard retry mode with a
  fixed number of attempts; the cache runs ``load`` off the event loop;
- errors become one ``SourceError`` line naming the secret and the AWS error *code* with a
  short explanation — never the secret value, and never AWS's free-text message (it can echo
  request details).
Credentials, region and role come from the standard AWS chain (environment, profile, role),
optionally narrowed by ``region``, ``profile`` and ``endpoint_url`` in the config.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

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

from gateway.errors import SourceError
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

    def load(self) -> Document:
        try:
            response = self._get_client().get_secret_value(SecretId=self.secret_id, VersionStage="AWSCURRENT")
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            why = _EXPLAIN.get(code) or (f"HTTP {status}" if status else "request failed")
            raise self._fail(f"{code}: {why}") from None
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError):
            raise self._fail(
                "no usable AWS credentials (standard chain: environment, profile, instance or task role)"
            ) from None
        except NoRegionError:
            raise self._fail("no AWS region configured (set region in the keyring or AWS_REGION)") from None
        except ProfileNotFound:
            raise self._fail(f"AWS profile {self.profile!r} not found") from None
        except (ConnectTimeoutError, ReadTimeoutError):
            raise self._fail("timed out waiting for Secrets Manager") from None
        except EndpointConnectionError:
            raise self._fail("cannot connect to the Secrets Manager endpoint") from None
        except BotoCoreError as exc:
            raise self._fail(f"{type(exc).__name__}") from None
        version_id = response.get("VersionId", "")
        if "SecretString" in response:
            data = response["SecretString"].encode("utf-8")
        elif "SecretBinary" in response:
            data = bytes(response["SecretBinary"])
        else:
            raise self._fail("the secret has no value")
        return Document(data=data, version_id=version_id)
