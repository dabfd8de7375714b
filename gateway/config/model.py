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
from gateway.config.keyring_model import KeyringConfig
from gateway.config.route_model import ROUTE_KEYS, RouteConfig
from gateway.replay import STORES as REPLAY_STORES
from gateway.replay import ReplaySettings

LOG_LEVELS = ("debug", "info", "warning", "error")


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
    redis_cluster: bool = setting(
        False,
        "Redis in cluster mode (cluster-mode-enabled clusters, ElastiCache Serverless): `redis_url` names any "
        "node; the slot map is read from it with `CLUSTER NODES`, each key goes to the primary owning its slot "
        "over one pipelined connection per node, `MOVED`/`ASK` redirections are followed, and a node that "
        "cannot be asked fails its keys closed (`503 replay_store_unavailable`). The start-up checks hold for "
        "every primary. A cluster has only database 0: another in the URL stops `serve` (exit 5). See "
        "[What Redis must guarantee](#what-redis-must-guarantee-for-replay-protection)",
    )
    source: Path | None = None
    overrides: tuple[str, ...] = field(default=())  # env variables applied (names only)

    @property
    def replay(self) -> ReplaySettings:
        return ReplaySettings(
            store=self.replay_store,
            max_entries=self.replay_max_entries,
            redis_url=self.redis_url,
            key_prefix=self.redis_key_prefix,
            cluster=self.redis_cluster,
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
                "redis_cluster": self.redis_cluster,
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
