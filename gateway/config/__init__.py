"""Configuration: one TOML file plus environment overrides -> frozen dataclasses, validated once.

- ``model``: the dataclasses, each setting declared once (key, default, bounds, doc line);
  ``route_model`` the routes' (and which settings apply to which mode and scheme);
- ``declare``: how a setting is declared, and the README tables rendered from declarations;
- ``reader``: typed, located reading of TOML tables, and environment overrides;
- ``sections`` and ``routes``: the tables' parsers and the checks across them;
- ``load``: file -> ``GatewayConfig`` (every problem named in one ``ConfigError``).
"""

from __future__ import annotations

from gateway.config.keyring_model import SOURCES, KeyringConfig
from gateway.config.load import CONFIG_ENV, DEFAULT_CONFIG_PATH, load, parse, resolve_path
from gateway.config.model import EchoConfig, GatewayConfig, ListenerConfig, is_loopback, redact_url
from gateway.config.reader import ENV_PREFIX, apply_env_overrides
from gateway.config.route_model import SCHEMES, RouteConfig
from gateway.config.sections import MIN_CLIENT_TOKEN

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "MIN_CLIENT_TOKEN",
    "SCHEMES",
    "SOURCES",
    "EchoConfig",
    "GatewayConfig",
    "KeyringConfig",
    "ListenerConfig",
    "RouteConfig",
    "apply_env_overrides",
    "is_loopback",
    "load",
    "parse",
    "redact_url",
    "resolve_path",
]
