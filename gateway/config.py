"""Configuration: one TOML file plus environment overrides -> frozen dataclasses.

Validated once, at start (and by ``hmac-gateway check-config``, which runs the same code).
Every problem found is collected and reported together in one ``ConfigError``; unknown keys
are errors (a typo must not silently fall back to a default).

Invariants:
- a listener that carries a sign route binds to loopback unless ``allow_non_loopback = true``
  (a sign listener is a signing oracle for whoever can reach it);
- upstreams come only from here: absolute ``http``/``https`` base URLs, never from a request.

Environment overrides: ``HMAC_GATEWAY__<SECTION>__<KEY>=<value>``, ``__`` between levels,
case-insensitive, ``_`` matching ``-`` in names, list items by index
(``HMAC_GATEWAY__ROUTES__0__UPSTREAM``). Values are read as TOML values when they parse as one
(``8080``, ``true``, ``["a"]``) and as plain strings otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from gateway.errors import ConfigError
from gateway.http_vocab import HOP_BY_HOP
from gateway.keys.formats import ENCODINGS
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
from gateway.replay.address import RedisAddress
from gateway.rotation.settings import policy_for
from gateway.signing.rfc9421 import DEFAULT_COMPONENTS, ComponentError, parse_components

ENV_PREFIX = "HMAC_GATEWAY__"
CONFIG_ENV = "HMAC_GATEWAY_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
SCHEMES = ("rfc9421",)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    host: str = "127.0.0.1"
    port: int = 8080
    allow_non_loopback: bool = False
    health_endpoints: bool = True
    # who may read /metrics and /readyz's details besides loopback callers (CIDRs)
    ops_allowed_networks: tuple[str, ...] = ()
    client_token_env: str | None = None  # env var holding the token clients must send
    client_token: str = field(default="", repr=False, compare=False)  # resolved at load; never shown


SOURCES = ("file", "aws-secretsmanager")
_FILE_KEYS = ("path", "create", "seal_key_env", "check_permissions")
_AWS_KEYS = (
    "secret_id",
    "region",
    "profile",
    "endpoint_url",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "max_attempts",
)


@dataclass(frozen=True, slots=True)
class KeyringConfig:
    """One ``[keyrings.<name>]`` table as written (what ``check-config --json`` shows).

    Defaults are the keys package's (``gateway.keys.settings``); ``settings`` is what the
    keys package is handed.
    """

    name: str
    source: str = "file"
    encoding: str = DEFAULT_ENCODING
    start_degraded: bool = False
    # file
    path: Path = FILE_DEFAULTS.path
    create: bool = FILE_DEFAULTS.create
    seal_key_env: str | None = FILE_DEFAULTS.seal_key_env
    check_permissions: bool = FILE_DEFAULTS.check_permissions
    # aws-secretsmanager
    secret_id: str = SECRETS_MANAGER_DEFAULTS.secret_id
    region: str | None = SECRETS_MANAGER_DEFAULTS.region
    profile: str | None = SECRETS_MANAGER_DEFAULTS.profile
    endpoint_url: str | None = SECRETS_MANAGER_DEFAULTS.endpoint_url
    connect_timeout: float = SECRETS_MANAGER_DEFAULTS.connect_timeout
    read_timeout: float = SECRETS_MANAGER_DEFAULTS.read_timeout
    max_attempts: int = SECRETS_MANAGER_DEFAULTS.max_attempts
    # cache
    refresh_interval: float = REFRESH_DEFAULTS.interval
    refresh_jitter: float = REFRESH_DEFAULTS.jitter
    max_staleness: float = REFRESH_DEFAULTS.max_staleness
    early_refresh_interval: float = REFRESH_DEFAULTS.early_refresh_interval
    backoff_cap: float = REFRESH_DEFAULTS.backoff_cap
    # rotation (hmac-gateway rotate)
    propagation_delay: float | None = ROTATION_DEFAULTS.propagation_delay
    overlap: float = ROTATION_DEFAULTS.overlap
    rotation_period: float = ROTATION_DEFAULTS.rotation_period
    emergency_grace: float = ROTATION_DEFAULTS.emergency_grace
    clock_skew: float = ROTATION_DEFAULTS.clock_skew
    audit_log: Path | None = ROTATION_DEFAULTS.audit_log

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
            name=self.name, source=source, encoding=self.encoding, refresh=refresh, rotation=rotation
        )


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    listener: str
    mode: str  # "sign" | "verify"
    upstream: str
    keyring: str
    path_prefix: str = "/"
    strip_prefix: bool = False
    scheme: str = "rfc9421"
    max_body_bytes: int = 1024 * 1024
    upstream_timeout: float = 30.0
    connect_timeout: float = 5.0
    # sign
    label: str = "sig1"
    tag: str | None = "hmac-gateway"
    components: tuple[str, ...] = DEFAULT_COMPONENTS
    # verify
    required_components: tuple[str, ...] = DEFAULT_COMPONENTS
    window_past: int = 300
    window_future: int = 30
    require_nonce: bool = False
    require_alg: bool = False
    require_tag: str | None = None
    replay_protection: bool = True
    keep_signature_headers: bool = False
    key_id_header: str = "X-Gateway-Key-Id"
    debug_signature_base: bool = False
    public_scheme: str = "http"
    authorities: tuple[str, ...] = ()  # verify: the Host values senders may sign for (empty: any)


@dataclass(frozen=True, slots=True)
class EchoConfig:
    host: str = "127.0.0.1"
    port: int = 8090


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listeners: dict[str, ListenerConfig]
    keyrings: dict[str, KeyringConfig]
    routes: tuple[RouteConfig, ...]
    echo: EchoConfig | None = None
    log_level: str = "info"
    shutdown_grace: float = 10.0
    # a connection must deliver a whole request head within this long of opening (or of the
    # previous answer); idle keep-alive connections close after it too (slow-loris bound)
    header_timeout: float = 15.0
    replay_max_entries: int = 1_000_000
    replay_store: str = "memory"  # "memory" (one process) or "redis" (shared)
    redis_url: str = field(default="", repr=False)  # may carry a password: never shown whole
    redis_key_prefix: str = "hmac-gateway:replay:"
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
                "redis_url": _redact_url(self.redis_url) if self.redis_url else None,
                "redis_key_prefix": self.redis_key_prefix,
            },
            "listeners": {n: _public(v) for n, v in self.listeners.items()},
            "keyrings": {n: _public(v) for n, v in self.keyrings.items()},
            "routes": [_public(r) for r in self.routes],
            "echo": _public(self.echo) if self.echo else None,
        }


_NEVER_SHOWN = frozenset({"client_token"})


def _public(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in obj.__dataclass_fields__:  # type: ignore[attr-defined]
        if name in _NEVER_SHOWN:
            continue
        value = getattr(obj, name)
        out[name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return out


def _redact_url(url: str) -> str:
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


# -- loading ------------------------------------------------------------------------------


def resolve_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    problems: list[str] = []
    applied = apply_env_overrides(raw, environ, problems)
    return parse(
        raw, base_dir=path.resolve().parent, source=path, problems=problems, overrides=applied, environ=environ
    )


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    applied = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        parts = variable[len(ENV_PREFIX) :].split("__")
        node: Any = raw
        ok = True
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"{variable}: {part!r} is not an index of a list of {len(node)}")
                    ok = False
                    break
                if last:
                    problems.append(f"{variable}: cannot replace a whole list item")
                    ok = False
                    break
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                problems.append(f"{variable}: {part!r} does not name a table")
                ok = False
                break
            existing = next((k for k in node if _norm(k) == _norm(part)), None)
            if last:
                node[existing or _norm(part)] = _parse_env_value(environ[variable])
            elif existing is None:
                problems.append(f"{variable}: no [{part.lower()}] section in the config file")
                ok = False
                break
            else:
                node = node[existing]
        if ok:
            applied.append(variable)
    return tuple(applied)


class _Reader:
    """Typed access to one TOML table, recording problems under a location prefix."""

    def __init__(self, table: Any, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            table = {}
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds:
            self.problems.append(f"{self.where}.{key}: must be {kind_name}, got {value!r}")
            return default
        if not isinstance(value, kinds):
            self.problems.append(f"{self.where}.{key}: must be {kind_name}, got {value!r}")
            return default
        return value

    def text(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, (str,), "a string")

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, default, (bool,), "true or false"))

    def integer(self, key: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        value = int(self._get(key, default, (int,), "an integer"))
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.problems.append(f"{self.where}.{key}: must be {bound}, got {value}")
            return default
        return value

    def number(self, key: str, default: float, lo: float = 0.0, positive: bool = True) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if value < lo or (positive and value <= 0):
            self.problems.append(f"{self.where}.{key}: must be {'> 0' if positive else f'>= {lo}'}, got {value}")
            return default
        return value

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list(default), (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            self.problems.append(f"{self.where}.{key}: must be a list of strings")
            return default
        return tuple(value)

    def finish(self) -> None:
        for key in sorted(set(self.table) - self.used):
            self.problems.append(f"{self.where}: unknown key {key!r}")


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RESERVED_HEADERS = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-type",
    "content-digest",
    "signature",
    "signature-input",
    "x-request-id",
}


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TCHAR for c in text)


def _sf_safe(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in text)


def parse(
    raw: dict[str, Any],
    *,
    base_dir: Path,
    source: Path | None = None,
    problems: list[str] | None = None,
    overrides: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    problems = [] if problems is None else problems
    environ = os.environ if environ is None else environ
    top = _Reader(raw, "config", problems)
    top.used.update({"gateway", "listeners", "keyrings", "routes", "echo"})

    gw = _Reader(raw.get("gateway", {}), "[gateway]", problems)
    log_level = gw.text("log_level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        problems.append(f"[gateway].log_level: must be debug, info, warning or error, got {log_level!r}")
    shutdown_grace = gw.number("shutdown_grace_seconds", 10.0)
    header_timeout = gw.number("header_timeout_seconds", 15.0)
    replay_max = gw.integer("replay_max_entries", 1_000_000, lo=1)
    replay_store = gw.text("replay_store", "memory")
    redis_url = gw.text("redis_url", "")
    redis_prefix = gw.text("redis_key_prefix", "hmac-gateway:replay:")
    if replay_store not in REPLAY_STORES:
        problems.append(f"[gateway].replay_store: must be 'memory' or 'redis', got {replay_store!r}")
    elif replay_store == "redis" and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        problems.append("[gateway].redis_url: required for replay_store = 'redis' (redis://host:6379/0)")
    elif replay_store == "redis":
        try:
            RedisAddress.parse(redis_url)
        except ValueError as exc:  # its message never repeats the URL, which may hold a password
            problems.append(f"[gateway].{exc}")
    gw.finish()

    listeners = _parse_listeners(raw.get("listeners", {}), problems, environ)
    keyrings = _parse_keyrings(raw.get("keyrings", {}), base_dir, problems)
    routes = _parse_routes(raw.get("routes", []), listeners, keyrings, problems)

    echo = None
    if "echo" in raw:
        er = _Reader(raw["echo"], "[echo]", problems)
        echo = EchoConfig(host=er.text("host", "127.0.0.1"), port=er.integer("port", 8090, hi=65535))
        er.finish()
        if not is_loopback(echo.host):
            problems.append("[echo].host: the demo echo upstream binds to loopback only")

    _check_binds(listeners, echo, problems)
    for name, listener in listeners.items():
        has_sign = any(r.mode == "sign" for r in routes if r.listener == name)
        if has_sign and not is_loopback(listener.host) and not listener.allow_non_loopback:
            problems.append(
                f"[listeners.{name}]: carries a sign route but binds {listener.host}; sign listeners are "
                f"signing oracles and bind to loopback unless allow_non_loopback = true"
            )
    top.finish()
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(
        listeners=listeners,
        keyrings=keyrings,
        routes=tuple(routes),
        echo=echo,
        log_level=log_level,
        shutdown_grace=shutdown_grace,
        header_timeout=header_timeout,
        replay_max_entries=replay_max,
        replay_store=replay_store,
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        source=source,
        overrides=overrides,
    )


def _tables(value: Any, section: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.append(f"[{section}]: must be a table of named tables")
        return {}
    return value


MIN_CLIENT_TOKEN = 16


def _parse_listeners(value: Any, problems: list[str], environ: Mapping[str, str]) -> dict[str, ListenerConfig]:
    out = {}
    tables = _tables(value, "listeners", problems)
    if not tables:
        problems.append("[listeners]: at least one listener is required")
    for name, table in tables.items():
        where = f"[listeners.{name}]"
        r = _Reader(table, where, problems)
        token_env = r.text("client_token_env", None)
        token = ""
        if token_env is not None:
            token = environ.get(token_env, "")
            if len(token) < MIN_CLIENT_TOKEN:
                problems.append(
                    f"{where}.client_token_env: ${token_env} must hold a token of at least "
                    f"{MIN_CLIENT_TOKEN} characters (it is {'unset' if not token else 'too short'})"
                )
        out[name] = ListenerConfig(
            name=name,
            host=r.text("host", "127.0.0.1"),
            port=r.integer("port", 8080, hi=65535),
            allow_non_loopback=r.flag("allow_non_loopback", False),
            health_endpoints=r.flag("health_endpoints", True),
            ops_allowed_networks=_networks(
                r.str_list("ops_allowed_networks", ()), f"{where}.ops_allowed_networks", problems
            ),
            client_token_env=token_env,
            client_token=token,
        )
        r.finish()
    return out


def _networks(values: tuple[str, ...], where: str, problems: list[str]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            problems.append(f"{where}: {value!r} is not a network such as 10.0.0.0/8")
    return values


def _parse_keyrings(value: Any, base_dir: Path, problems: list[str]) -> dict[str, KeyringConfig]:
    out = {}
    tables = _tables(value, "keyrings", problems)
    if not tables:
        problems.append("[keyrings]: at least one keyring is required")
    for name, table in tables.items():
        where = f"[keyrings.{name}]"
        r = _Reader(table, where, problems)
        source = r.text("source", "file")
        if source not in SOURCES:
            problems.append(f"{where}.source: must be one of {', '.join(SOURCES)}, got {source!r}")
        foreign = _AWS_KEYS if source == "file" else _FILE_KEYS if source in SOURCES else ()
        for key in foreign:
            if key in r.table:
                problems.append(f"{where}.{key}: does not apply to a {source} keyring")
        path = Path(f"{name}.json")
        secret_id = ""
        if source == "file":
            path_text = r.text("path", None)
            if path_text is None:
                problems.append(f"{where}.path: required for a file keyring")
            else:
                path = Path(path_text)
        elif source == "aws-secretsmanager":
            secret_id = r.text("secret_id", "")
            if not secret_id:
                problems.append(f"{where}.secret_id: required (the secret's name or ARN)")
        endpoint_url = r.text("endpoint_url", None)
        if endpoint_url is not None and urlsplit(endpoint_url).scheme not in ("http", "https"):
            problems.append(f"{where}.endpoint_url: must be an http(s) URL")
        encoding = r.text("encoding", DEFAULT_ENCODING)
        if encoding not in ENCODINGS:
            problems.append(f"{where}.encoding: must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        out[name] = KeyringConfig(
            name=name,
            source=source,
            encoding=encoding,
            start_degraded=r.flag("start_degraded", False),
            path=path if path.is_absolute() else base_dir / path,
            create=r.flag("create", FILE_DEFAULTS.create),
            seal_key_env=r.text("seal_key_env", FILE_DEFAULTS.seal_key_env),
            check_permissions=r.flag("check_permissions", FILE_DEFAULTS.check_permissions),
            secret_id=secret_id,
            region=r.text("region", SECRETS_MANAGER_DEFAULTS.region),
            profile=r.text("profile", SECRETS_MANAGER_DEFAULTS.profile),
            endpoint_url=endpoint_url,
            connect_timeout=r.number("connect_timeout_seconds", SECRETS_MANAGER_DEFAULTS.connect_timeout),
            read_timeout=r.number("read_timeout_seconds", SECRETS_MANAGER_DEFAULTS.read_timeout),
            max_attempts=r.integer("max_attempts", SECRETS_MANAGER_DEFAULTS.max_attempts, lo=1, hi=10),
            refresh_interval=r.number("refresh_interval_seconds", REFRESH_DEFAULTS.interval),
            refresh_jitter=r.number("refresh_jitter", REFRESH_DEFAULTS.jitter, positive=False),
            max_staleness=r.number("max_staleness_seconds", REFRESH_DEFAULTS.max_staleness),
            early_refresh_interval=r.number("early_refresh_interval_seconds", REFRESH_DEFAULTS.early_refresh_interval),
            backoff_cap=r.number("backoff_cap_seconds", REFRESH_DEFAULTS.backoff_cap),
            **_rotation_fields(r, base_dir),
        )
        if out[name].refresh_jitter >= 1:
            problems.append(f"{where}.refresh_jitter: must be a fraction below 1")
        _check_rotation_policy(out[name], where, problems)
        r.finish()
    return out


def _rotation_fields(r: _Reader, base_dir: Path) -> dict[str, Any]:
    delay = (
        r.number("propagation_delay_seconds", 0.0, positive=False) if "propagation_delay_seconds" in r.table else None
    )
    audit = r.text("audit_log", None)
    return {
        "propagation_delay": delay,
        "overlap": r.number("overlap_seconds", ROTATION_DEFAULTS.overlap),
        "rotation_period": r.number("rotation_period_seconds", ROTATION_DEFAULTS.rotation_period, positive=False),
        "emergency_grace": r.number("emergency_grace_seconds", ROTATION_DEFAULTS.emergency_grace, positive=False),
        "clock_skew": r.number("clock_skew_seconds", ROTATION_DEFAULTS.clock_skew, positive=False),
        "audit_log": None if audit is None else (base_dir / audit if not Path(audit).is_absolute() else Path(audit)),
    }


def _check_rotation_policy(kc: KeyringConfig, where: str, problems: list[str]) -> None:
    try:
        policy_for(kc.settings)
    except ConfigError as exc:
        problems.extend(f"{where}.{p}" for p in exc.problems)


def _parse_routes(
    value: Any, listeners: dict[str, ListenerConfig], keyrings: dict[str, KeyringConfig], problems: list[str]
) -> list[RouteConfig]:
    if not isinstance(value, list) or not value:
        problems.append("[[routes]]: at least one route is required")
        return []
    out = []
    seen: set[tuple[str, str]] = set()
    for index, table in enumerate(value):
        name = table.get("name", f"routes[{index}]") if isinstance(table, dict) else f"routes[{index}]"
        where = f"[[routes]] {name!s}"
        r = _Reader(table, where, problems)
        r.used.add("name")
        listener = r.text("listener", "")
        if listener not in listeners:
            problems.append(f"{where}.listener: {listener!r} is not a configured listener")
        keyring = r.text("keyring", "")
        if keyring not in keyrings:
            problems.append(f"{where}.keyring: {keyring!r} is not a configured keyring")
        mode = r.text("mode", "")
        if mode not in ("sign", "verify"):
            problems.append(f"{where}.mode: must be 'sign' or 'verify', got {mode!r}")
        upstream = r.text("upstream", "")
        _check_upstream(upstream, where, problems)
        prefix = r.text("path_prefix", "/")
        if not prefix.startswith("/"):
            problems.append(f"{where}.path_prefix: must start with '/'")
        if (listener, prefix) in seen:
            problems.append(f"{where}.path_prefix: {prefix!r} is already routed on listener {listener!r}")
        seen.add((listener, prefix))
        scheme = r.text("scheme", "rfc9421")
        if scheme not in SCHEMES:
            problems.append(f"{where}.scheme: must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        components = r.str_list("components", DEFAULT_COMPONENTS)
        required = r.str_list("required_components", DEFAULT_COMPONENTS)
        for key, names in (("components", components), ("required_components", required)):
            try:
                parse_components(names)
            except ComponentError as exc:
                problems.append(f"{where}.{key}: {exc}")
        label = r.text("label", "sig1")
        tag = r.text("tag", "hmac-gateway")
        require_tag = r.text("require_tag", None)
        for key, text in (("label", label), ("tag", tag), ("require_tag", require_tag)):
            if text is not None and not _sf_safe(text):
                problems.append(f"{where}.{key}: printable ASCII without quotes or backslashes only")
        if (
            not label
            or not (label[0].islower() or label[0] == "*")
            or not all(c.islower() or c.isdigit() or c in "_-.*" for c in label)
        ):
            problems.append(f"{where}.label: must be a structured-field key (lower case, digits, _-.*)")
        key_id_header = r.text("key_id_header", "X-Gateway-Key-Id")
        if not _is_token(key_id_header) or key_id_header.lower() in _RESERVED_HEADERS:
            problems.append(f"{where}.key_id_header: must be a header name of our own (not {key_id_header!r})")
        public_scheme = r.text("public_scheme", "http")
        if public_scheme not in ("http", "https"):
            problems.append(f"{where}.public_scheme: must be http or https")
        out.append(
            RouteConfig(
                name=str(name),
                listener=listener,
                mode=mode,
                upstream=upstream,
                keyring=keyring,
                path_prefix=prefix,
                strip_prefix=r.flag("strip_prefix", False),
                scheme=scheme,
                max_body_bytes=r.integer("max_body_bytes", 1024 * 1024, lo=0),
                upstream_timeout=r.number("upstream_timeout_seconds", 30.0),
                connect_timeout=r.number("connect_timeout_seconds", 5.0),
                label=label,
                tag=tag or None,
                components=components,
                required_components=required,
                window_past=r.integer("window_past_seconds", 300, lo=1),
                window_future=r.integer("window_future_seconds", 30, lo=0),
                require_nonce=r.flag("require_nonce", False),
                require_alg=r.flag("require_alg", False),
                require_tag=require_tag,
                replay_protection=r.flag("replay_protection", True),
                keep_signature_headers=r.flag("keep_signature_headers", False),
                key_id_header=key_id_header,
                debug_signature_base=r.flag("debug_signature_base", False),
                public_scheme=public_scheme,
                authorities=tuple(a.lower() for a in r.str_list("authorities", ())),
            )
        )
        r.finish()
    return out


def _check_upstream(upstream: str, where: str, problems: list[str]) -> None:
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # not echoed: a mistyped URL may carry credentials
        problems.append(f"{where}.upstream: must be an absolute http(s) URL")
    elif parts.query or parts.fragment or parts.username or parts.password:
        problems.append(f"{where}.upstream: must not carry a query, fragment or credentials")


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host.strip("[]")


def _check_binds(listeners: dict[str, ListenerConfig], echo: EchoConfig | None, problems: list[str]) -> None:
    named = [(f"[listeners.{n}]", lc.host, lc.port) for n, lc in listeners.items()]
    if echo:
        named.append(("[echo]", echo.host, echo.port))
    seen: list[tuple[str, str, int]] = []
    for where, host, port in named:
        if port:
            for other, other_host, other_port in seen:
                a, b = _bind_host(host), _bind_host(other_host)
                wildcard = {"0.0.0.0", "::"} & {a, b}
                if other_port == port and (a == b or wildcard):
                    problems.append(f"{where}: {host}:{port} overlaps {other_host}:{port} of {other}")
                    break
        seen.append((where, host, port))
