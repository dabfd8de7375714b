"""Route settings per mode and scheme: a route may carry only the settings its mode and scheme
use (a clear problem names the key and where it applies), and a verify route is handed its
scheme's own settings object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod
from gateway.errors import ConfigError
from gateway.signing import github, registry, rfc9421, slack, standard_webhooks, stripe


def raw_config(**verify: Any) -> dict[str, Any]:
    return {
        "keyrings": {"ring": {"path": "/tmp/ring.json"}},
        "listeners": {"sign": {"port": 8080}, "verify": {"port": 8081}},
        "routes": [
            {"name": "out", "listener": "sign", "mode": "sign", "upstream": "http://127.0.0.1:9000", "keyring": "ring"},
            {
                "name": "in",
                "listener": "verify",
                "mode": "verify",
                "upstream": "http://127.0.0.1:9001",
                "keyring": "ring",
            }
            | verify,
        ],
    }


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_mod.parse(raw, base_dir=Path("/etc"))
    return info.value.problems


@pytest.mark.parametrize(
    ("scheme", "settings", "expected"),
    [
        (
            "rfc9421",
            {"window_past_seconds": 60, "require_nonce": True},
            rfc9421.VerifyPolicy(window_past=60, require_nonce=True),
        ),
        ("standard-webhooks", {"window_future_seconds": 5}, standard_webhooks.StandardWebhooksSettings(300, 5)),
        ("stripe", {"window_past_seconds": 120}, stripe.StripeSettings(120, 30)),
        ("slack", {}, slack.SlackSettings(300, 30)),
        ("github", {"require_delivery_id": True, "replay_window_seconds": 600}, github.GitHubSettings(True, 600)),
    ],
)
def test_a_verify_route_carries_its_scheme_s_settings_object(
    scheme: str, settings: dict[str, Any], expected: object
) -> None:
    route = config_mod.parse(raw_config(scheme=scheme, **settings), base_dir=Path("/etc")).routes[1]
    assert route.verify_settings == expected
    registry.verifier_for(scheme, route.verify_settings)  # the handler builds exactly this


@pytest.mark.parametrize(
    ("route", "key", "value", "fragment"),
    [
        (0, "window_past_seconds", 60, "does not apply to a sign route with scheme 'rfc9421'"),
        (0, "require_nonce", True, "does not apply to a sign route"),
        (0, "keep_signature_headers", True, "does not apply to a sign route"),
        (1, "components", ["@method"], "does not apply to a verify route with scheme 'rfc9421' (it applies to sign"),
        (1, "sign_with", "signing-key", "(it applies to sign routes with scheme 'standard-webhooks')"),
    ],
)
def test_a_key_the_route_s_mode_does_not_use_is_refused(route: int, key: str, value: Any, fragment: str) -> None:
    raw = raw_config()
    raw["routes"][route][key] = value
    [problem] = problems(raw)
    assert problem.startswith(f"[[routes]] {('out', 'in')[route]}.{key}: ") and fragment in problem


@pytest.mark.parametrize(
    ("scheme", "key", "value"),
    [
        ("github", "require_nonce", True),
        ("github", "window_past_seconds", 60),
        ("stripe", "require_delivery_id", True),
        ("slack", "required_components", ["@method"]),
        ("standard-webhooks", "debug_signature_base", True),
        ("rfc9421", "replay_window_seconds", 60),
    ],
)
def test_a_key_the_route_s_scheme_does_not_use_is_refused(scheme: str, key: str, value: Any) -> None:
    [problem] = problems(raw_config(scheme=scheme, **{key: value}))
    assert f"[[routes]] in.{key}: does not apply to a verify route with scheme {scheme!r}" in problem


def test_a_sign_route_signs_only_with_a_scheme_that_signs() -> None:
    raw = raw_config()
    raw["routes"][0]["scheme"] = "github"
    assert problems(raw) == [
        "[[routes]] out.scheme: a sign route signs with rfc9421 or standard-webhooks, not 'github'"
    ]


def test_public_config_shows_only_the_settings_that_apply() -> None:
    cfg = config_mod.parse(raw_config(scheme="github"), base_dir=Path("/etc"))
    out, into = cfg.to_public_dict()["routes"]
    assert "window_past" not in out and "components" in out
    assert "require_delivery_id" in into and "window_past" not in into and "verify_settings" not in into
