"""A ``[[routes]]`` table's settings, each declared once, and which of them apply to a route of
a given mode and scheme (``ROUTE_KEYS``): a route carrying a setting its mode or scheme does
not use is a config error, so a sign route never carries verify-only settings and each verify
scheme reads only its own. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.declare import REQUIRED, setting
from gateway.proxy.tls import UpstreamTLS
from gateway.signing.registry import SCHEMES as SCHEME_REGISTRY
from gateway.signing.registry import SIGN_SCHEMES
from gateway.signing.rfc9421 import DEFAULT_COMPONENTS

SCHEMES = tuple(SCHEME_REGISTRY)
SIGN_WITH = ("every-active-key", "signing-key")
MODES = ("sign", "verify")

_WINDOWED = "*verify* (`rfc9421`, `standard-webhooks`, `stripe`, `slack`)"


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One ``[[routes]]`` table. Which settings a route may carry depends on its mode and scheme
    (``ROUTE_KEYS``); ``verify_settings`` is the scheme's own settings object, built at load."""

    name: str = setting(REQUIRED, "appears in logs and metrics", shown_default="`routes[i]`")
    listener: str = setting(REQUIRED, "listener name", shown_default="—")
    mode: str = setting(REQUIRED, "`sign` or `verify`", choices=MODES, shown_default="—")
    upstream: str = setting(
        REQUIRED, "absolute `http(s)://host[:port][/base]`; the request path is appended", shown_default="—"
    )
    keyring: str = setting(REQUIRED, "keyring name", shown_default="—")
    path_prefix: str = setting("/", "longest matching prefix (on `/` boundaries) wins")
    strip_prefix: bool = setting(False, "remove the prefix before appending to the upstream path")
    scheme: str = setting(
        "rfc9421",
        "signature scheme: `rfc9421`, `standard-webhooks`, `github`, `stripe` or `slack` on verify routes; "
        "`rfc9421` or `standard-webhooks` on sign routes (see [Webhook schemes](#webhook-schemes))",
        choices=SCHEMES,
    )
    max_body_bytes: int = setting(1024 * 1024, "larger bodies get `413` before more is read")
    upstream_timeout: float = setting(30.0, "max wait between upstream reads → `504`", key="upstream_timeout_seconds")
    connect_timeout: float = setting(5.0, "upstream connect timeout", key="connect_timeout_seconds")
    upstream_ca_file: Path | None = setting(
        None,
        "`https` upstreams: PEM bundle of the CAs to trust *instead of* the system store (a private CA); "
        "relative to the config file",
        shown_default="system CAs",
    )
    upstream_cert_file: Path | None = setting(
        None, "`https` upstreams: client certificate (PEM chain) for mutual TLS; needs `upstream_key_file`"
    )
    upstream_key_file: Path | None = setting(
        None, "`https` upstreams: the client certificate's private key (PEM, unencrypted; keep it mode 0600)"
    )
    upstream_tls_min_version: str = setting(
        "1.2", "`https` upstreams: the lowest TLS version accepted, `1.2` or `1.3`", choices=("1.2", "1.3")
    )
    # sign
    label: str = setting("sig1", "*sign* (`rfc9421`): signature label")
    tag: str | None = setting("hmac-gateway", '*sign* (`rfc9421`): `tag` parameter (set `""` to omit)')
    components: tuple[str, ...] = setting(
        DEFAULT_COMPONENTS,
        "*sign* (`rfc9421`): covered components (`content-type` added when present)",
        shown_default="default set",
    )
    sign_with: str = setting(
        "every-active-key",
        "*sign* (`standard-webhooks`): `every-active-key` puts one `v1,` signature per active key in "
        "`webhook-signature` (during a rotation overlap a receiver holding only the old or only the new key "
        "accepts), `signing-key` only the primary key's",
        choices=SIGN_WITH,
    )
    # verify
    required_components: tuple[str, ...] = setting(
        DEFAULT_COMPONENTS,
        "*verify* (`rfc9421`): components every accepted signature must cover",
        shown_default="default set",
    )
    window_past: int = setting(
        300, f"{_WINDOWED}: how old `created` / the signed timestamp may be", key="window_past_seconds", lo=1
    )
    window_future: int = setting(
        30,
        f"{_WINDOWED}: how far ahead `created` / the signed timestamp may be (clock skew)",
        key="window_future_seconds",
        lo=0,
    )
    require_nonce: bool = setting(False, "*verify* (`rfc9421`): demand a `nonce` parameter")
    require_alg: bool = setting(False, "*verify* (`rfc9421`): demand an `alg` parameter")
    require_tag: str | None = setting(None, "*verify* (`rfc9421`): only signatures with this `tag`")
    require_delivery_id: bool = setting(
        False, "*verify* (`github`): refuse deliveries without `X-GitHub-Delivery` (`401 missing_parameter`)"
    )
    replay_window: int = setting(
        86400,
        "*verify* (`github`): how long a delivery id (else the signature) is refused after first use; GitHub "
        "signs no timestamp, so this is all that stops a replay",
        key="replay_window_seconds",
        lo=1,
    )
    replay_protection: bool = setting(True, "*verify*: refuse a signature (or message id) seen before")
    keep_signature_headers: bool = setting(False, "*verify*: forward the scheme's signature headers")
    key_id_header: str = setting("X-Gateway-Key-Id", "*verify*: header carrying the verified key id")
    debug_signature_base: bool = setting(
        False,
        "*verify* (`rfc9421`): echo the signature base in `signature_mismatch` answers (for onboarding a sender; "
        "never enable in production)",
    )
    public_scheme: str = setting(
        "http",
        "*verify* (`rfc9421`): scheme senders used (`https` behind a TLS terminator), for `@scheme` / `@target-uri`",
        choices=("http", "https"),
    )
    authorities: tuple[str, ...] = setting(
        (),
        '*verify*: the `Host` values this route serves, e.g. `["hooks.example.com"]`; others get '
        "`421 misdirected` (stops a signature made for another service sharing the keyring from replaying here)",
        shown_default="any",
    )
    verify_settings: Any = field(default=None, repr=False, compare=False)  # the scheme's settings object

    @property
    def upstream_tls(self) -> UpstreamTLS:
        return UpstreamTLS(
            ca_file=self.upstream_ca_file,
            cert_file=self.upstream_cert_file,
            key_file=self.upstream_key_file,
            min_version=self.upstream_tls_min_version,
        )


_ROUTE_COMMON = (
    "name",
    "listener",
    "mode",
    "upstream",
    "keyring",
    "path_prefix",
    "strip_prefix",
    "scheme",
    "max_body_bytes",
    "upstream_timeout",
    "connect_timeout",
    "upstream_ca_file",
    "upstream_cert_file",
    "upstream_key_file",
    "upstream_tls_min_version",
)
_VERIFY_COMMON = ("replay_protection", "keep_signature_headers", "key_id_header", "authorities")
_WINDOWS = ("window_past", "window_future")
# (mode, scheme) -> the RouteConfig attributes a route of that mode and scheme may carry.
ROUTE_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("sign", "rfc9421"): (*_ROUTE_COMMON, "label", "tag", "components"),
    ("sign", "standard-webhooks"): (*_ROUTE_COMMON, "sign_with"),
    ("verify", "rfc9421"): (
        *_ROUTE_COMMON,
        *_VERIFY_COMMON,
        *_WINDOWS,
        "required_components",
        "require_nonce",
        "require_alg",
        "require_tag",
        "debug_signature_base",
        "public_scheme",
    ),
    ("verify", "standard-webhooks"): (*_ROUTE_COMMON, *_VERIFY_COMMON, *_WINDOWS),
    ("verify", "stripe"): (*_ROUTE_COMMON, *_VERIFY_COMMON, *_WINDOWS),
    ("verify", "slack"): (*_ROUTE_COMMON, *_VERIFY_COMMON, *_WINDOWS),
    ("verify", "github"): (*_ROUTE_COMMON, *_VERIFY_COMMON, "require_delivery_id", "replay_window"),
}
assert all(mode == "verify" or scheme in SIGN_SCHEMES for mode, scheme in ROUTE_KEYS)
