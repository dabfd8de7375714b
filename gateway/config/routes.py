"""Parsing ``[[routes]]``: declared settings by ``reader.read_declared``, then what ties a route to
the rest (its listener and keyring exist, prefixes do not collide, components parse, header names
are ours to set)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.config.model import KeyringConfig, ListenerConfig, RouteConfig
from gateway.config.reader import Reader, read_declared
from gateway.http_vocab import HOP_BY_HOP
from gateway.signing.rfc9421 import ComponentError, parse_components

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Headers a verify route must not name as its key-id header: it would overwrite what it verified.
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


def parse_routes(
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
        r = Reader(table, where, problems)
        r.used.add("name")
        v = read_declared(RouteConfig, r, skip=("name",))
        _check(v, where, listeners, keyrings, problems)
        if (v["listener"], v["path_prefix"]) in seen:
            problems.append(
                f"{where}.path_prefix: {v['path_prefix']!r} is already routed on listener {v['listener']!r}"
            )
        seen.add((v["listener"], v["path_prefix"]))
        v["tag"] = v["tag"] or None
        v["authorities"] = tuple(a.lower() for a in v["authorities"])
        out.append(RouteConfig(name=str(name), **v))
        r.finish()
    return out


def _check(
    v: dict[str, Any],
    where: str,
    listeners: dict[str, ListenerConfig],
    keyrings: dict[str, KeyringConfig],
    problems: list[str],
) -> None:
    if v["listener"] not in listeners:
        problems.append(f"{where}.listener: {v['listener']!r} is not a configured listener")
    if v["keyring"] not in keyrings:
        problems.append(f"{where}.keyring: {v['keyring']!r} is not a configured keyring")
    _check_upstream(v["upstream"], where, problems)
    if not v["path_prefix"].startswith("/"):
        problems.append(f"{where}.path_prefix: must start with '/'")
    for key in ("components", "required_components"):
        try:
            parse_components(v[key])
        except ComponentError as exc:
            problems.append(f"{where}.{key}: {exc}")
    for key in ("label", "tag", "require_tag"):
        if v[key] is not None and not _sf_safe(v[key]):
            problems.append(f"{where}.{key}: printable ASCII without quotes or backslashes only")
    label = v["label"]
    if (
        not label
        or not (label[0].islower() or label[0] == "*")
        or not all(c.islower() or c.isdigit() or c in "_-.*" for c in label)
    ):
        problems.append(f"{where}.label: must be a structured-field key (lower case, digits, _-.*)")
    key_id_header = v["key_id_header"]
    if not _is_token(key_id_header) or key_id_header.lower() in _RESERVED_HEADERS:
        problems.append(f"{where}.key_id_header: must be a header name of our own (not {key_id_header!r})")


def _check_upstream(upstream: str, where: str, problems: list[str]) -> None:
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # not echoed: a mistyped URL may carry credentials
        problems.append(f"{where}.upstream: must be an absolute http(s) URL")
    elif parts.query or parts.fragment or parts.username or parts.password:
        problems.append(f"{where}.upstream: must not carry a query, fragment or credentials")
