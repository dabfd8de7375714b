"""Settings of keyring sources and of the per-process keyring cache.

Frozen values built once by ``gateway.config`` and read by ``gateway.keys.factory``. Every
default is declared here, once: the config parser, the README's tables and the cache read
them from these classes rather than restating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENCODING = "raw"


@dataclass(frozen=True, slots=True)
class FileSourceSettings:
    """A JSON keyring on disk. ``create``: serve's start-up creates it when missing."""

    path: Path
    create: bool = False
    seal_key_env: str | None = None  # the variable holding the master key; never the key
    # during a master-key change (``reseal``): the variable holding the old key, tried second
    previous_seal_key_env: str | None = None
    check_permissions: bool = True

    @property
    def description(self) -> str:
        return f"file:{self.path}"


@dataclass(frozen=True, slots=True)
class SecretsManagerSettings:
    """One AWS Secrets Manager secret; credentials come from the standard AWS chain."""

    secret_id: str
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_attempts: int = 3  # total calls per load, the first included

    @property
    def description(self) -> str:
        return f"aws-secretsmanager:{self.secret_id}"


SourceSettings = FileSourceSettings | SecretsManagerSettings


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """How a cache refreshes its keyring in the background, and when it counts as stale."""

    interval: float = 30.0
    jitter: float = 0.1  # +/- fraction of the interval
    max_staleness: float = 3600.0  # /readyz turns 503 past this age of the last good load
    early_refresh_interval: float = 10.0  # min seconds between unknown-key-id refreshes
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0


@dataclass(frozen=True, slots=True)
class RotationSettings:
    """How ``hmac-gateway rotate`` treats the keyring (``gateway.rotation.controller`` turns this into
    a ``Policy``). ``propagation_delay`` None: derived from the refresh interval and jitter."""

    propagation_delay: float | None = None
    overlap: float = 86400.0  # how long a demoted primary keeps verifying
    rotation_period: float = 30 * 86400.0  # 0: a new key only when asked
    emergency_grace: float = 0.0
    clock_skew: float = 60.0
    audit_log: Path | None = None  # JSON lines, one per action, refusal and emergency


@dataclass(frozen=True, slots=True)
class KeyringSettings:
    """Everything the keys package needs to read one keyring and keep it fresh."""

    name: str
    source: SourceSettings
    encoding: str = DEFAULT_ENCODING
    refresh: RefreshPolicy = field(default_factory=RefreshPolicy)
    # Lambda functions that verify with this keyring outside the gateway: each is made to cold
    # start after every write (``gateway.rotation.hooks``) so it loads the new keys
    propagation_lambdas: tuple[str, ...] = ()
    rotation: RotationSettings = field(default_factory=RotationSettings)


# The defaults, as values: what config falls back to when a key is absent.
FILE_DEFAULTS = FileSourceSettings(path=Path("keyring.json"))
SECRETS_MANAGER_DEFAULTS = SecretsManagerSettings(secret_id="")
REFRESH_DEFAULTS = RefreshPolicy()
ROTATION_DEFAULTS = RotationSettings()
