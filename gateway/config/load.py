"""Loading the configuration: one TOML file plus environment overrides -> ``GatewayConfig``.

Validated once, at start (and by ``hmac-gateway check-config``, which runs the same code).
Every problem found is collected and reported together in one ``ConfigError``; unknown keys
are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.model import GatewayConfig, is_loopback
from gateway.config.reader import Reader, apply_env_overrides, read_declared
from gateway.config.routes import parse_routes
from gateway.config.sections import check_binds, parse_echo, parse_keyrings, parse_listeners
from gateway.errors import ConfigError
from gateway.replay.address import RedisAddress

CONFIG_ENV = "HMAC_GATEWAY_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
_GATEWAY_ONLY = ("listeners", "keyrings", "routes", "echo", "source", "overrides")


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
    top = Reader(raw, "config", problems)
    top.used.update({"gateway", "listeners", "keyrings", "routes", "echo"})

    gw = Reader(raw.get("gateway", {}), "[gateway]", problems)
    settings = read_declared(GatewayConfig, gw, skip=_GATEWAY_ONLY)
    _check_redis(settings["replay_store"], settings["redis_url"], problems)
    gw.finish()

    listeners = parse_listeners(raw.get("listeners", {}), problems, environ)
    keyrings = parse_keyrings(raw.get("keyrings", {}), base_dir, problems)
    routes = parse_routes(raw.get("routes", []), listeners, keyrings, problems, base_dir)
    echo = parse_echo(raw, problems)
    check_binds(listeners, echo, problems)
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
        source=source,
        overrides=overrides,
        **settings,
    )


def _check_redis(store: str, url: str, problems: list[str]) -> None:
    if store != "redis":
        return
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        problems.append("[gateway].redis_url: required for replay_store = 'redis' (redis://host:6379/0)")
        return
    try:
        RedisAddress.parse(url)
    except ValueError as exc:  # its message never repeats the URL, which may hold a password
        problems.append(f"[gateway].{exc}")
