"""Parsing the ``[listeners.*]``, ``[keyrings.*]`` and ``[echo]`` tables, and the checks across
them. Declared settings are read by ``reader.read_declared``; what is left here is what a
declaration cannot say (a value read from the environment, a path made absolute, a source's
own keys, overlapping binds)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.keyring_model import AWS_KEYS, FILE_KEYS, SOURCES, KeyringConfig
from gateway.config.model import EchoConfig, ListenerConfig, is_loopback
from gateway.config.reader import Reader, read_declared
from gateway.errors import ConfigError
from gateway.keys.formats import ENCODINGS
from gateway.rotation.settings import policy_for

MIN_CLIENT_TOKEN = 16


def tables(value: Any, section: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.append(f"[{section}]: must be a table of named tables")
        return {}
    return value


def parse_listeners(value: Any, problems: list[str], environ: Mapping[str, str]) -> dict[str, ListenerConfig]:
    out = {}
    named = tables(value, "listeners", problems)
    if not named:
        problems.append("[listeners]: at least one listener is required")
    for name, table in named.items():
        where = f"[listeners.{name}]"
        r = Reader(table, where, problems)
        values = read_declared(ListenerConfig, r)
        token_env = values["client_token_env"]
        token = ""
        if token_env is not None:
            token = environ.get(token_env, "")
            if len(token) < MIN_CLIENT_TOKEN:
                problems.append(
                    f"{where}.client_token_env: ${token_env} must hold a token of at least "
                    f"{MIN_CLIENT_TOKEN} characters (it is {'unset' if not token else 'too short'})"
                )
        for network in values["ops_allowed_networks"]:
            try:
                ipaddress.ip_network(network, strict=True)
            except ValueError:
                problems.append(f"{where}.ops_allowed_networks: {network!r} is not a network such as 10.0.0.0/8")
        out[name] = ListenerConfig(name=name, client_token=token, **values)
        r.finish()
    return out


def parse_keyrings(value: Any, base_dir: Path, problems: list[str]) -> dict[str, KeyringConfig]:
    out = {}
    named = tables(value, "keyrings", problems)
    if not named:
        problems.append("[keyrings]: at least one keyring is required")
    for name, table in named.items():
        where = f"[keyrings.{name}]"
        r = Reader(table, where, problems)
        values = read_declared(KeyringConfig, r)
        source = values["source"]
        foreign = AWS_KEYS if source == "file" else FILE_KEYS if source in SOURCES else ()
        for key in foreign:
            if key in r.table:
                problems.append(f"{where}.{key}: does not apply to a {source} keyring")
        if source == "file" and "path" not in r.table:
            problems.append(f"{where}.path: required for a file keyring")
        if source == "file":
            path = values["path"] if "path" in r.table else Path(f"{name}.json")
            values["path"] = path if path.is_absolute() else base_dir / path
        if values["audit_log"] is not None and not values["audit_log"].is_absolute():
            values["audit_log"] = base_dir / values["audit_log"]
        if source == "aws-secretsmanager" and not values["secret_id"]:
            problems.append(f"{where}.secret_id: required (the secret's name or ARN)")
        if values["endpoint_url"] is not None and urlsplit(values["endpoint_url"]).scheme not in ("http", "https"):
            problems.append(f"{where}.endpoint_url: must be an http(s) URL")
        if values["encoding"] not in ENCODINGS:
            problems.append(f"{where}.encoding: must be one of {', '.join(ENCODINGS)}, got {values['encoding']!r}")
        if values["previous_seal_key_env"] and not values["seal_key_env"]:
            problems.append(f"{where}.previous_seal_key_env: needs seal_key_env (the new master key's variable)")
        if values["refresh_jitter"] >= 1:
            problems.append(f"{where}.refresh_jitter: must be a fraction below 1")
        out[name] = KeyringConfig(name=name, **values)
        try:
            policy_for(out[name].settings)  # a rotation policy that would break senders
        except ConfigError as exc:
            problems.extend(f"{where}.{problem}" for problem in exc.problems)
        r.finish()
    return out


def parse_echo(raw: dict[str, Any], problems: list[str]) -> EchoConfig | None:
    if "echo" not in raw:
        return None
    r = Reader(raw["echo"], "[echo]", problems)
    echo = EchoConfig(**read_declared(EchoConfig, r))
    r.finish()
    if not is_loopback(echo.host):
        problems.append("[echo].host: the demo echo upstream binds to loopback only")
    return echo


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host.strip("[]")


def check_binds(listeners: dict[str, ListenerConfig], echo: EchoConfig | None, problems: list[str]) -> None:
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
