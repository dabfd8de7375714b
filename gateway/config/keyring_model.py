"""A ``[keyrings.<name>]`` table's settings, each declared once, and the keys that belong to one
source or to rotation (config refuses a file key on a Secrets Manager keyring and the other way
round). Defaults are the keys package's (``gateway.keys.settings``). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config.declare import setting
from gateway.keys.settings import (
    DEFAULT_ENCODING,
    FILE_DEFAULTS,
    REFRESH_DEFAULTS,
    ROTATION_DEFAULTS,
    SECRETS_MANAGER_DEFAULTS,
    FileSourceSettings,
    KeyringSettings,
    RefreshPolicy,
    RotationSettings,
    SecretsManagerSettings,
    SourceSettings,
)

SOURCES = ("file", "aws-secretsmanager")


@dataclass(frozen=True, slots=True)
class KeyringConfig:
    """One ``[keyrings.<name>]`` table as written (what ``check-config --json`` shows).

    Defaults are the keys package's (``gateway.keys.settings``); ``settings`` is what the
    keys package is handed.
    """

    name: str
    source: str = setting("file", "`file` or `aws-secretsmanager`", choices=SOURCES)
    encoding: str = setting(
        DEFAULT_ENCODING, "how secrets become key bytes: `raw` (UTF-8 bytes as stored), `hex`, `base64`"
    )
    start_degraded: bool = setting(
        False,
        "start even if this keyring cannot be loaded: its routes answer `503 keyring_unavailable` and `/readyz` "
        "is 503 until it loads (otherwise `serve` exits 3)",
    )
    # file
    path: Path = setting(
        FILE_DEFAULTS.path, "JSON keyring file; relative paths are relative to the config file", required=True
    )
    create: bool = setting(
        FILE_DEFAULTS.create,
        "`serve` creates the file at start with one random 32-byte key if missing (mode 0600); `keys` and "
        "`check-config` never write it",
    )
    seal_key_env: str | None = setting(
        FILE_DEFAULTS.seal_key_env,
        "name of the env var holding the base64 AES-256 master key of a sealed file (during a master-key change: "
        "the **new** key)",
    )
    previous_seal_key_env: str | None = setting(
        FILE_DEFAULTS.previous_seal_key_env,
        "during a master-key change, the env var holding the **old** key: the file opens with either, and is "
        "always written under `seal_key_env`'s (see [Re-sealing a keyring file](#re-sealing-a-keyring-file))",
    )
    check_permissions: bool = setting(
        FILE_DEFAULTS.check_permissions, "refuse a keyring file that group or others can read"
    )
    # aws-secretsmanager
    secret_id: str = setting(SECRETS_MANAGER_DEFAULTS.secret_id, "the secret's name or ARN", required=True)
    region: str | None = setting(SECRETS_MANAGER_DEFAULTS.region, "e.g. `eu-west-1`", shown_default="AWS chain")
    profile: str | None = setting(
        SECRETS_MANAGER_DEFAULTS.profile, "a named profile (which may assume a role)", shown_default="AWS chain"
    )
    endpoint_url: str | None = setting(
        SECRETS_MANAGER_DEFAULTS.endpoint_url, "a VPC endpoint or a test server", shown_default="AWS default"
    )
    connect_timeout: float = setting(
        SECRETS_MANAGER_DEFAULTS.connect_timeout, "per call", key="connect_timeout_seconds"
    )
    read_timeout: float = setting(SECRETS_MANAGER_DEFAULTS.read_timeout, "per call", key="read_timeout_seconds")
    max_attempts: int = setting(
        SECRETS_MANAGER_DEFAULTS.max_attempts,
        "total calls per refresh, first included (botocore standard retry mode)",
        lo=1,
        hi=10,
    )
    # cache
    refresh_interval: float = setting(
        REFRESH_DEFAULTS.interval, "background refresh interval (± jitter)", key="refresh_interval_seconds"
    )
    refresh_jitter: float = setting(
        REFRESH_DEFAULTS.jitter, "fraction of the interval to randomise by (below 1)", lo=0.0, positive=False
    )
    max_staleness: float = setting(
        REFRESH_DEFAULTS.max_staleness,
        "`/readyz` turns 503 when the last good load is older",
        key="max_staleness_seconds",
    )
    early_refresh_interval: float = setting(
        REFRESH_DEFAULTS.early_refresh_interval,
        "an unknown key id triggers at most one early refresh per this interval",
        key="early_refresh_interval_seconds",
    )
    backoff_cap: float = setting(
        REFRESH_DEFAULTS.backoff_cap,
        "cap of the exponential back-off (1 s, 2 s, 4 s, …) after failed refreshes",
        key="backoff_cap_seconds",
    )
    # rotation (hmac-gateway rotate)
    propagation_delay: float | None = setting(
        ROTATION_DEFAULTS.propagation_delay,
        "how long a key stays pending before it may sign; raise it for verifiers outside the gateway",
        key="propagation_delay_seconds",
        positive=False,
        shown_default="derived: `ceil(2 * refresh_interval * (1 + jitter) + 60)` (126 s by default)",
    )
    overlap: float = setting(
        ROTATION_DEFAULTS.overlap,
        "how long a demoted primary keeps verifying; at least propagation delay + clock skew",
        key="overlap_seconds",
    )
    rotation_period: float = setting(
        ROTATION_DEFAULTS.rotation_period,
        "advance adds a key when the primary is this old; `0`: only when asked",
        key="rotation_period_seconds",
        positive=False,
        shown_default="`2592000` (30 days)",
    )
    emergency_grace: float = setting(
        ROTATION_DEFAULTS.emergency_grace,
        "how long a compromised primary keeps verifying after `--emergency`",
        key="emergency_grace_seconds",
        positive=False,
    )
    clock_skew: float = setting(
        ROTATION_DEFAULTS.clock_skew,
        "how far a verifier's clock may run ahead of the rotator's",
        key="clock_skew_seconds",
        positive=False,
    )
    audit_log: Path | None = setting(ROTATION_DEFAULTS.audit_log, "audit file (relative to the config file)")
    # verifiers outside the gateway (gateway.rotation.hooks)
    propagation_lambdas: tuple[str, ...] = setting(
        (),
        "names of Lambda functions that verify with this keyring outside the gateway: after each write by the "
        "rotation Lambda each is made to cold start so it loads the new version (see "
        "[Rotation Lambda](#rotation-lambda))",
    )

    @property
    def settings(self) -> KeyringSettings:
        source: SourceSettings
        if self.source == "aws-secretsmanager":
            source = SecretsManagerSettings(
                secret_id=self.secret_id,
                region=self.region,
                profile=self.profile,
                endpoint_url=self.endpoint_url,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                max_attempts=self.max_attempts,
            )
        else:
            source = FileSourceSettings(
                path=self.path,
                create=self.create,
                seal_key_env=self.seal_key_env,
                previous_seal_key_env=self.previous_seal_key_env,
                check_permissions=self.check_permissions,
            )
        refresh = RefreshPolicy(
            interval=self.refresh_interval,
            jitter=self.refresh_jitter,
            max_staleness=self.max_staleness,
            early_refresh_interval=self.early_refresh_interval,
            backoff_cap=self.backoff_cap,
        )
        rotation = RotationSettings(
            propagation_delay=self.propagation_delay,
            overlap=self.overlap,
            rotation_period=self.rotation_period,
            emergency_grace=self.emergency_grace,
            clock_skew=self.clock_skew,
            audit_log=self.audit_log,
        )
        return KeyringSettings(
            name=self.name,
            source=source,
            encoding=self.encoding,
            refresh=refresh,
            rotation=rotation,
            propagation_lambdas=self.propagation_lambdas,
        )


FILE_KEYS = ("path", "create", "seal_key_env", "previous_seal_key_env", "check_permissions")
ROTATION_KEYS = (
    "propagation_delay_seconds",
    "overlap_seconds",
    "rotation_period_seconds",
    "emergency_grace_seconds",
    "clock_skew_seconds",
    "audit_log",
)
AWS_KEYS = (
    "secret_id",
    "region",
    "profile",
    "endpoint_url",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "max_attempts",
)
