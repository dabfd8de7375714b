"""Parsing ``[[routes]]``: declared settings by ``reader.read_declared``, then what ties a route to
the rest (its listener and keyring exist, prefixes do not collide, components parse, header names
are ours to set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.declare import declared, key_of
from gateway.config.keyring_model import KeyringConfig
from gateway.config.model import ListenerConfig
from gateway.config.reader import Reader, read_declared
from gateway.config.route_model import ROUTE_KEYS, RouteConfig
from gateway.http_vocab import HOP_BY_HOP
from gateway.proxy.tls import TLSConfigError, UpstreamTLS, client_context
from gateway.signing import github, registry, rfc9421
from gateway.signing.registry import SIGN_SCHEMES
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
    *(name for names in registry.SIGNATURE_HEADERS.values() for name in names),
}
_KEY_OF = {attr: key_of(attr, info) for attr, _, _, info in declared(RouteConfig)}


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TCHAR for c in text)


def _sf_safe(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in text)


def parse_routes(
    value: Any,
    listeners: dict[str, ListenerConfig],
    keyrings: dict[str, KeyringConfig],
    problems: list[str],
    base_dir: Path,
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
        applies = _check_applies(r, v, where, problems)
        _check(v, where, listeners, keyrings, problems, applies)
        if (v["listener"], v["path_prefix"]) in seen:
            problems.append(
                f"{where}.path_prefix: {v['path_prefix']!r} is already routed on listener {v['listener']!r}"
            )
        seen.add((v["listener"], v["path_prefix"]))
        v["tag"] = v["tag"] or None
        v["authorities"] = tuple(a.lower() for a in v["authorities"])
        _upstream_tls(v, where, base_dir, problems)
        if v["mode"] == "verify":
            v["verify_settings"] = _verify_settings(v)
        out.append(RouteConfig(name=str(name), **v))
        r.finish()
    return out


_TLS_FILES = ("upstream_ca_file", "upstream_cert_file", "upstream_key_file")


def _upstream_tls(v: dict[str, Any], where: str, base_dir: Path, problems: list[str]) -> None:
    """Make the TLS files absolute and build the context once now, so an unusable file is a
    config error naming it (never quoting it), not a failure on every request."""
    for attr in _TLS_FILES:
        if v[attr] is not None and not v[attr].is_absolute():
            v[attr] = base_dir / v[attr]
    named = [attr for attr in _TLS_FILES if v[attr] is not None]
    if urlsplit(v["upstream"]).scheme != "https":
        if named:
            problems.append(f"{where}.{named[0]}: applies to https upstreams only")
        return
    try:
        client_context(
            UpstreamTLS(
                v["upstream_ca_file"], v["upstream_cert_file"], v["upstream_key_file"], v["upstream_tls_min_version"]
            )
        )
    except TLSConfigError as exc:
        problems.append(f"{where}.upstream TLS: {exc}")


def _check_applies(r: Reader, v: dict[str, Any], where: str, problems: list[str]) -> frozenset[str]:
    """Refuse every key the table names that the route's mode and scheme do not use; returns the
    attributes that do apply (the others keep their defaults and are never checked or shown)."""
    mode, scheme = v["mode"], v["scheme"]
    if mode == "sign" and scheme not in SIGN_SCHEMES:
        problems.append(f"{where}.scheme: a sign route signs with {' or '.join(SIGN_SCHEMES)}, not {scheme!r}")
        scheme = "rfc9421"
    applies = frozenset(ROUTE_KEYS.get((mode, scheme), ROUTE_KEYS[("verify", "rfc9421")]))
    for attr, key in _KEY_OF.items():
        if key in r.table and attr not in applies:
            where_it_applies = "; ".join(
                f"{m} routes with scheme {s!r}" for (m, s), attrs in ROUTE_KEYS.items() if attr in attrs
            )
            problems.append(
                f"{where}.{key}: does not apply to a {mode} route with scheme {scheme!r} "
                f"(it applies to {where_it_applies})"
            )
    return applies


def _verify_settings(v: dict[str, Any]) -> object:
    """The route's scheme's own settings object (``registry.SCHEMES[scheme].settings_type``)."""
    scheme = v["scheme"]
    if scheme == "rfc9421":
        try:
            required = frozenset(c.identifier for c in parse_components(v["required_components"]))
        except ComponentError:  # already reported by _check
            required = rfc9421.VerifyPolicy().required
        return rfc9421.VerifyPolicy(
            required=required,
            window_past=v["window_past"],
            window_future=v["window_future"],
            require_nonce=v["require_nonce"],
            require_alg=v["require_alg"],
            expected_tag=v["require_tag"],
        )
    if scheme == "github":
        return github.GitHubSettings(require_delivery_id=v["require_delivery_id"], replay_window=v["replay_window"])
    settings_type: Any = registry.SCHEMES[scheme].settings_type
    return settings_type(window_past=v["window_past"], window_future=v["window_future"])


def _check(
    v: dict[str, Any],
    where: str,
    listeners: dict[str, ListenerConfig],
    keyrings: dict[str, KeyringConfig],
    problems: list[str],
    applies: frozenset[str],
) -> None:
    if v["listener"] not in listeners:
        problems.append(f"{where}.listener: {v['listener']!r} is not a configured listener")
    if v["keyring"] not in keyrings:
        problems.append(f"{where}.keyring: {v['keyring']!r} is not a configured keyring")
    _check_upstream(v["upstream"], where, problems)
    if not v["path_prefix"].startswith("/"):
        problems.append(f"{where}.path_prefix: must start with '/'")
    for key in ("components", "required_components"):
        if key not in applies:
            continue
        try:
            parse_components(v[key])
        except ComponentError as exc:
            problems.append(f"{where}.{key}: {exc}")
    for key in ("label", "tag", "require_tag"):
        if key in applies and v[key] is not None and not _sf_safe(v[key]):
            problems.append(f"{where}.{key}: printable ASCII without quotes or backslashes only")
    label = v["label"]
    if "label" in applies and (
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
