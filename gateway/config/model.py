"""The configuration as frozen dataclasses: one per TOML table, every setting declared once
(key, default, bounds, documentation line) with ``setting(...)``.

Invariants:
- a listener that carries a sign route binds to loopback unless ``allow_non_loopback = true``
  (a sign listener is a signing oracle for whoever can reach it);
- upstreams come only from here: absolute ``http``/``https`` base URLs, never from a request;
- nothing here holds a secret: config names environment variables, never their values (the
  one value read, a listener's client token, is never shown).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from gateway.config.declare import setting
from gateway.config.route_model import ROUTE_KEYS, RouteConfig
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
from gateway.replay import STORES as REPLAY_STORES
from gateway.replay import ReplaySettings

LOG_LEVELS = ("debug", "info", "warning", "error")
SOURCES = ("file", "aws-secretsmanager")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    host: str = setting("127.0.0.1", "bind address")
    port: int = setting(8080, "bind port", hi=65535)
    allow_non_loopback: bool = setting(
        False, "required to bind a listener that carries a **sign** route to a non-loopback address"
    )
    health_endpoints: bool = setting(True, "serve `/healthz`, `/readyz` and `/metrics` on this listener")
    ops_allowed_networks: tuple[str, ...] = setting(
        (),
        'networks (CIDRs, e.g. `["10.0.0.0/8"]`) whose callers may read `/metrics` and `/readyz`\'s details, '
        "besides loopback callers, who always may. Everyone else gets `/readyz`'s status only and "
        "`403 forbidden` for `/metrics`",
    )
    client_token_env: str | None = setting(
        None,
        "name of an env var holding a token (≥ 16 characters) every request must send in `X-Gateway-Token` "
        "(compared in constant time, stripped before forwarding; health endpoints exempt). Use it when a sign "
        "listener must leave loopback",
    )
    client_token: str = field(default="", repr=False, compare=False)  # resolved at load; never shown


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


@dataclass(frozen=True, slots=True)
class EchoConfig:
    host: str = setting("127.0.0.1", "loopback only")
    port: int = setting(8090, "bind port", hi=65535)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listeners: dict[str, ListenerConfig]
    keyrings: dict[str, KeyringConfig]
    routes: tuple[RouteConfig, ...]
    echo: EchoConfig | None = None
    log_level: str = setting("info", "`debug`, `info`, `warning`, `error`", choices=LOG_LEVELS)
    shutdown_grace: float = setting(
        10.0, "on SIGTERM, time in-flight requests get to finish", key="shutdown_grace_seconds"
    )
    header_timeout: float = setting(
        15.0,
        "a connection must deliver a whole request head within this long of opening, or of the previous answer "
        "on a kept-alive connection; otherwise it is closed (slow-loris clients trickling header bytes "
        "included). Idle keep-alive connections close after it too",
        key="header_timeout_seconds",
    )
    replay_max_entries: int = setting(
        1_000_000,
        "in-memory replay store capacity; when full, new signatures get `503 replay_store_full` (never evicts)",
        lo=1,
    )
    replay_store: str = setting(
        "memory",
        "`memory` (one process) or `redis`: one store shared by every instance and `--workers` process",
        choices=REPLAY_STORES,
    )
    redis_url: str = setting(
        "",
        'for `replay_store = "redis"`: `redis://[[user]:password@]host:6379/0`, `rediss://…` for TLS (server '
        "certificate checked against the system CA store) or `unix:///path/redis.sock?db=0`; the password "
        "(userinfo or `?password=`) is never printed, and a malformed URL is a config error (exit 2). A wrong "
        "password stops `serve` with exit 5 naming Redis's answer (`WRONGPASS`, `NOAUTH`). Each process keeps "
        "one pipelined connection; a command unanswered within 0.5 s fails closed (`503 "
        "replay_store_unavailable`) and the next one reconnects. Redis must run with `maxmemory-policy "
        "noeviction` — `serve` checks at start and exits 5 otherwise — so a full store refuses (`503 "
        "replay_store_full`) instead of forgetting live entries. See "
        "[What Redis must guarantee](#what-redis-must-guarantee-for-replay-protection)",
        shown_default="—",
        repr=False,  # may carry a password: never shown whole
    )
    redis_key_prefix: str = setting("hmac-gateway:replay:", "key prefix in Redis")
    source: Path | None = None
    overrides: tuple[str, ...] = field(default=())  # env variables applied (names only)

    @property
    def replay(self) -> ReplaySettings:
        return ReplaySettings(
            store=self.replay_store,
            max_entries=self.replay_max_entries,
            redis_url=self.redis_url,
            key_prefix=self.redis_key_prefix,
        )

    def routes_for(self, listener: str) -> list[RouteConfig]:
        return [r for r in self.routes if r.listener == listener]

    def to_public_dict(self) -> dict[str, Any]:
        """The effective configuration; holds no secrets (there are none in config)."""
        return {
            "source": str(self.source) if self.source else None,
            "env_overrides": list(self.overrides),
            "gateway": {
                "log_level": self.log_level,
                "shutdown_grace_seconds": self.shutdown_grace,
                "header_timeout_seconds": self.header_timeout,
                "replay_max_entries": self.replay_max_entries,
                "replay_store": self.replay_store,
                "redis_url": redact_url(self.redis_url) if self.redis_url else None,
                "redis_key_prefix": self.redis_key_prefix,
            },
            "listeners": {n: _public(v) for n, v in self.listeners.items()},
            "keyrings": {n: _public(v) for n, v in self.keyrings.items()},
            "routes": [_public_route(r) for r in self.routes],
            "echo": _public(self.echo) if self.echo else None,
        }


_NEVER_SHOWN = frozenset({"client_token", "verify_settings"})


def _public_route(route: RouteConfig) -> dict[str, Any]:
    """The settings that apply to the route's mode and scheme (no others are accepted)."""
    applies = ROUTE_KEYS.get((route.mode, route.scheme), ())
    return {k: v for k, v in _public(route).items() if k in applies}


def _public(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in obj.__dataclass_fields__:  # type: ignore[attr-defined]
        if name in _NEVER_SHOWN:
            continue
        value = getattr(obj, name)
        out[name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return out


def redact_url(url: str) -> str:
    """The URL with any password (in the userinfo or a query parameter) masked."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{netloc}")
    if parts.query:
        query = "&".join(
            f"{name}=***" if unquote_plus(name).lower() in ("password", "pass", "pwd") else f"{name}{sep}{value}"
            for name, sep, value in (pair.partition("=") for pair in parts.query.split("&"))
        )
        parts = parts._replace(query=query)
    return parts.geturl()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
