"""Configuration: TOML + env overrides -> validated dataclasses (gateway/config.py), and
``hmac-gateway check-config`` (gateway/cli.py)."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway import config as config_mod
from gateway.config import GatewayConfig
from gateway.errors import ConfigError

# -- helpers -------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config"

BASE: dict[str, Any] = {
    "gateway": {"log_level": "info"},
    "keyrings": {"main": {"source": "file", "path": "keys/main.json"}},
    "listeners": {"sign": {"host": "127.0.0.1", "port": 18080}, "verify": {"host": "127.0.0.1", "port": 18081}},
    "routes": [
        {"name": "out", "listener": "sign", "mode": "sign", "upstream": "http://127.0.0.1:9000", "keyring": "main"},
        {"name": "in", "listener": "verify", "mode": "verify", "upstream": "http://127.0.0.1:9001", "keyring": "main"},
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(raw: dict[str, Any]) -> str:
    """Just enough TOML for these tests: scalar tables, tables of named tables, [[routes]]."""
    lines: list[str] = []
    for section, body in raw.items():
        if section == "routes":
            for route in body:
                lines += ["[[routes]]", *(f"{k} = {_toml_value(v)}" for k, v in route.items()), ""]
        elif all(isinstance(v, dict) for v in body.values()) and body:
            for name, table in body.items():
                lines += [f'[{section}."{name}"]', *(f"{k} = {_toml_value(v)}" for k, v in table.items()), ""]
        else:
            lines += [f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in body.items()), ""]
    return "\n".join(lines)


def write_config(directory: Path, raw: dict[str, Any], name: str = "gateway.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(to_toml(raw))
    return path


def parse(raw: dict[str, Any]) -> GatewayConfig:
    return config_mod.parse(raw, base_dir=Path("/etc/hmac-gateway"))


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    return info.value.problems


def problems_after(change: Callable[[dict[str, Any]], Any]) -> list[str]:
    raw = base()
    change(raw)
    return problems_of(raw)


def assert_one_problem(problems: list[str], *fragments: str) -> None:
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0]


@pytest.fixture(autouse=True)
def _no_ambient_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads os.environ; a developer's own HMAC_GATEWAY__* must not leak into these tests.
    for name in list(os.environ):
        if name.upper().startswith("HMAC_GATEWAY"):
            monkeypatch.delenv(name)


# -- shipped configs and defaults ----------------------------------------------------------


def test_shipped_demo_config_loads() -> None:
    cfg = config_mod.load(SHIPPED / "gateway.toml", environ={})
    assert set(cfg.listeners) == {"sign", "verify"}
    assert [(r.name, r.mode, r.listener) for r in cfg.routes] == [
        ("outbound", "sign", "sign"),
        ("callbacks", "verify", "verify"),
    ]
    assert cfg.keyrings["demo"].path == SHIPPED / "keyrings" / "demo.json"
    assert cfg.keyrings["demo"].create is True
    assert config_mod.is_loopback(cfg.listeners["sign"].host)
    assert cfg.echo is not None
    assert cfg.source == SHIPPED / "gateway.toml"


def test_shipped_production_example_loads() -> None:
    cfg = config_mod.load(SHIPPED / "production-example.toml", environ={})
    assert cfg.listeners["callbacks"].host == "0.0.0.0"  # verify-only: allowed to be public
    assert cfg.routes_for("callbacks")[0].mode == "verify"
    assert cfg.routes_for("outbound")[0].mode == "sign"
    assert cfg.keyrings["plugin-to-backend"].seal_key_env == "HMAC_GATEWAY_MASTER_KEY"
    assert cfg.keyrings["plugin-to-backend"].path == Path("/var/lib/hmac-gateway/plugin-to-backend.json")
    assert cfg.echo is None


def test_minimal_config_gets_the_documented_defaults() -> None:
    cfg = parse(base())
    route = cfg.routes[0]
    assert route.path_prefix == "/"
    assert route.scheme == "rfc9421"
    assert route.components == ("@method", "@authority", "@path", "@query", "content-digest")
    assert (route.window_past, route.window_future) == (300, 30)
    assert route.replay_protection is True
    assert route.key_id_header == "X-Gateway-Key-Id"
    ring = cfg.keyrings["main"]
    assert (ring.encoding, ring.create, ring.check_permissions) == ("raw", False, True)
    assert cfg.listeners["sign"].allow_non_loopback is False
    assert cfg.replay_max_entries == 1_000_000


# -- every problem named -------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    raw = base()
    raw["gateway"]["log_level"] = "loud"  # 1: bad value
    raw["gateway"]["colour"] = "blue"  # 2: unknown key
    raw["listeners"]["verify"]["port"] = "8081"  # 3: wrong type
    raw["routes"][0]["keyring"] = "nope"  # 4: unknown keyring
    raw["routes"][1]["upstream"] = "ftp://files.example"  # 5: not http
    problems = problems_of(raw)
    expected = [
        "[gateway].log_level: must be one of debug, info, warning, error, got 'loud'",
        "[gateway]: unknown key 'colour'",
        "[listeners.verify].port: must be an integer, got '8081'",
        "[[routes]] out.keyring: 'nope' is not a configured keyring",
        "[[routes]] in.upstream: must be an absolute http(s) URL",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert len(problems) == 5


def test_empty_config_names_every_missing_section() -> None:
    problems = problems_of({})
    assert any("[listeners]: at least one listener is required" in p for p in problems)
    assert any("[keyrings]: at least one keyring is required" in p for p in problems)
    assert any("[[routes]]: at least one route is required" in p for p in problems)


def test_unknown_keys_are_rejected_at_every_level() -> None:
    raw = base()
    raw["extra_section"] = {}
    raw["gateway"]["lg_level"] = "info"
    raw["listeners"]["sign"]["hots"] = "127.0.0.1"
    raw["keyrings"]["main"]["refresh_interval"] = 5  # the real key ends in _seconds
    raw["routes"][0]["upsteam"] = "http://x"
    raw["echo"] = {"host": "127.0.0.1", "prot": 8090}
    problems = problems_of(raw)
    for fragment in (
        "config: unknown key 'extra_section'",
        "[gateway]: unknown key 'lg_level'",
        "[listeners.sign]: unknown key 'hots'",
        "[keyrings.main]: unknown key 'refresh_interval'",
        "[[routes]] out: unknown key 'upsteam'",
        "[echo]: unknown key 'prot'",
    ):
        assert fragment in problems, (fragment, problems)
    assert len(problems) == 6


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r["listeners"]["sign"].update(port="8080"), "[listeners.sign].port: must be an integer"),
        (lambda r: r["listeners"]["sign"].update(port=True), "[listeners.sign].port: must be an integer"),
        (lambda r: r["listeners"]["sign"].update(port=8080.0), "[listeners.sign].port: must be an integer"),
        (lambda r: r["listeners"]["sign"].update(port=70000), "[listeners.sign].port: must be between 0 and 65535"),
        (lambda r: r["listeners"]["sign"].update(host=127), "[listeners.sign].host: must be a string"),
        (lambda r: r["keyrings"]["main"].update(create="yes"), "[keyrings.main].create: must be true or false"),
        (
            lambda r: r["keyrings"]["main"].update(refresh_interval_seconds=-1),
            "[keyrings.main].refresh_interval_seconds: must be > 0",
        ),
        (
            lambda r: r["keyrings"]["main"].update(refresh_interval_seconds="30"),
            "[keyrings.main].refresh_interval_seconds: must be a number",
        ),
        (lambda r: r["keyrings"]["main"].update(refresh_jitter=1.5), "[keyrings.main].refresh_jitter"),
        (lambda r: r["keyrings"]["main"].update(encoding="utf-8"), "[keyrings.main].encoding: must be one of"),
        (lambda r: r["keyrings"]["main"].update(source="vault"), "[keyrings.main].source: must be"),
        (lambda r: r["keyrings"]["main"].pop("path"), "[keyrings.main].path: required"),
        (lambda r: r["routes"][0].update(mode="both"), "[[routes]] out.mode: must be one of sign, verify, got 'both'"),
        (lambda r: r["routes"][0].update(max_body_bytes=-1), "[[routes]] out.max_body_bytes: must be at least 0"),
        (lambda r: r["routes"][0].update(components="@method"), "[[routes]] out.components: must be a list"),
        (lambda r: r["routes"][0].update(components=["@method", 1]), "[[routes]] out.components: must be a list"),
        (lambda r: r["routes"][0].update(path_prefix="api"), "[[routes]] out.path_prefix: must start with '/'"),
        (lambda r: r["routes"][0].update(scheme="aws-sigv4"), "[[routes]] out.scheme: must be one of rfc9421"),
        (lambda r: r["routes"][0].update(label="Sig1"), "[[routes]] out.label: must be a structured-field key"),
        (lambda r: r["routes"][0].update(tag='a"b'), "[[routes]] out.tag: printable ASCII"),
        (lambda r: r["routes"][1].update(window_past_seconds=0), "[[routes]] in.window_past_seconds: must be"),
        (
            lambda r: r["routes"][1].update(public_scheme="ftp"),
            "[[routes]] in.public_scheme: must be one of http, https, got 'ftp'",
        ),
        (lambda r: r.update(routes={"out": {}}), "[[routes]]: at least one route is required"),
        (lambda r: r.update(listeners=["sign"]), "[listeners]: must be a table of named tables"),
        (lambda r: r["gateway"].update(replay_max_entries=0), "[gateway].replay_max_entries: must be at least 1"),
        (lambda r: r.update(echo={"host": "0.0.0.0"}), "[echo].host: the demo echo upstream binds to loopback"),
    ],
)
def test_wrong_types_and_values_are_named(change: Callable[[dict[str, Any]], Any], fragment: str) -> None:
    problems = problems_after(change)
    assert any(fragment in p for p in problems), (fragment, problems)


def test_empty_label_is_refused() -> None:
    problems = problems_after(lambda r: r["routes"][0].update(label=""))
    assert any(".label:" in p for p in problems)


def test_route_referencing_unknown_listener_and_keyring() -> None:
    problems = problems_after(lambda r: r["routes"][1].update(listener="public", keyring="callbacks"))
    assert "[[routes]] in.listener: 'public' is not a configured listener" in problems
    assert "[[routes]] in.keyring: 'callbacks' is not a configured keyring" in problems
    assert len(problems) == 2


def test_duplicate_path_prefix_on_one_listener() -> None:
    raw = base()
    raw["routes"].append({**raw["routes"][0], "name": "again"})
    assert_one_problem(problems_of(raw), "[[routes]] again.path_prefix", "already routed on listener 'sign'")


# -- upstreams -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upstream", ["ftp://files.example", "127.0.0.1:9000", "http://", "file:///etc/passwd", "//host/path", ""]
)
def test_upstream_must_be_an_absolute_http_url(upstream: str) -> None:
    problems = problems_after(lambda r: r["routes"][0].update(upstream=upstream))
    assert_one_problem(problems, "[[routes]] out.upstream: must be an absolute http(s) URL")


@pytest.mark.parametrize(
    "upstream",
    [
        "http://backend.example/api?token=abc",
        "http://backend.example/#frag",
        "https://user:hunter2@backend.example/",
        "https://user@backend.example/",
    ],
)
def test_upstream_must_not_carry_query_fragment_or_credentials(upstream: str) -> None:
    problems = problems_after(lambda r: r["routes"][0].update(upstream=upstream))
    assert_one_problem(problems, "[[routes]] out.upstream: must not carry a query, fragment or credentials")
    assert "hunter2" not in problems[0]


@pytest.mark.parametrize("upstream", ["https://backend.example", "http://[::1]:9000/base/path", "HTTP://x.example"])
def test_good_upstreams_are_accepted(upstream: str) -> None:
    raw = base()
    raw["routes"][0]["upstream"] = upstream
    assert parse(raw).routes[0].upstream == upstream


# -- binding -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.internal", ""])
def test_sign_listener_on_a_non_loopback_address_is_refused(host: str) -> None:
    problems = problems_after(lambda r: r["listeners"]["sign"].update(host=host))
    assert_one_problem(problems, "[listeners.sign]", "carries a sign route", "allow_non_loopback = true")


def test_sign_listener_may_bind_publicly_when_told_to() -> None:
    raw = base()
    raw["listeners"]["sign"].update(host="0.0.0.0", allow_non_loopback=True)
    assert parse(raw).listeners["sign"].host == "0.0.0.0"


def test_verify_only_listener_may_bind_publicly() -> None:
    raw = base()
    raw["listeners"]["verify"]["host"] = "0.0.0.0"
    assert parse(raw).listeners["verify"].host == "0.0.0.0"


def test_listener_carrying_both_modes_counts_as_sign() -> None:
    raw = base()
    raw["listeners"]["verify"]["host"] = "0.0.0.0"
    raw["routes"].append({**raw["routes"][0], "name": "sneaky", "listener": "verify", "path_prefix": "/out"})
    assert_one_problem(problems_of(raw), "[listeners.verify]", "carries a sign route")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_hosts_are_fine_for_sign(host: str) -> None:
    raw = base()
    raw["listeners"]["sign"]["host"] = host
    assert parse(raw).listeners["sign"].host == host


def test_duplicate_host_and_port_is_refused() -> None:
    problems = problems_after(lambda r: r["listeners"]["verify"].update(port=18080))
    assert_one_problem(problems, "[listeners.verify]: 127.0.0.1:18080 overlaps 127.0.0.1:18080 of [listeners.sign]")


def test_echo_cannot_share_a_listener_port() -> None:
    problems = problems_after(lambda r: r.update(echo={"host": "127.0.0.1", "port": 18081}))
    assert_one_problem(problems, "[echo]: 127.0.0.1:18081 overlaps 127.0.0.1:18081 of [listeners.verify]")


@pytest.mark.parametrize(("sign_host", "verify_host"), [("localhost", "127.0.0.1"), ("127.0.0.1", "0.0.0.0")])
def test_overlapping_binds_spelled_differently_are_refused(sign_host: str, verify_host: str) -> None:
    def change(r: dict[str, Any]) -> None:
        r["listeners"]["sign"].update(host=sign_host, port=18080)
        r["listeners"]["verify"].update(host=verify_host, port=18080)

    assert any("overlaps" in p for p in problems_after(change))


def test_several_port_zero_listeners_are_fine() -> None:
    raw = base()
    raw["listeners"]["sign"]["port"] = 0
    raw["listeners"]["verify"]["port"] = 0
    assert {lc.port for lc in parse(raw).listeners.values()} == {0}


# -- components ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["components", "required_components"])
@pytest.mark.parametrize(
    ("components", "fragment"),
    [
        (["@Method", "@path"], "not lower case"),
        (["@method", "Content-Type"], "not lower case"),
        (["@method", "@body"], "unsupported derived component '@body'"),
        (["@method", "@path", "@method"], "listed twice"),
        (["@method", "connection"], "hop-by-hop"),
        (["@method", '"@query-param"'], '"@query-param" needs exactly one string parameter "name"'),
    ],
)
def test_invalid_components_are_named(key: str, components: list[str], fragment: str) -> None:
    # components on the sign route ("out"), required_components on the verify route ("in")
    index, name = (0, "out") if key == "components" else (1, "in")
    problems = problems_after(lambda r: r["routes"][index].update({key: components}))
    assert_one_problem(problems, f"[[routes]] {name}.{key}:", fragment)


def test_valid_custom_components_are_kept_in_order() -> None:
    raw = base()
    raw["routes"][1]["required_components"] = ["@method", "@target-uri", "content-type", '"@query-param";name="a"']
    assert parse(raw).routes[1].required_components == (
        "@method",
        "@target-uri",
        "content-type",
        '"@query-param";name="a"',
    )


# -- environment overrides -------------------------------------------------------------------


def test_env_override_of_a_listener_port_is_an_integer(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    environ = {"HMAC_GATEWAY__LISTENERS__SIGN__PORT": "9999", "PATH": "/usr/bin", "HMAC_GATEWAY_CONFIG": "x"}
    cfg = config_mod.load(path, environ=environ)
    assert cfg.listeners["sign"].port == 9999
    assert isinstance(cfg.listeners["sign"].port, int)
    assert cfg.overrides == ("HMAC_GATEWAY__LISTENERS__SIGN__PORT",)
    assert cfg.to_public_dict()["env_overrides"] == ["HMAC_GATEWAY__LISTENERS__SIGN__PORT"]


def test_env_override_of_a_route_upstream_is_a_string(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    cfg = config_mod.load(path, environ={"HMAC_GATEWAY__ROUTES__0__UPSTREAM": "https://backend.example:8443/v2"})
    assert cfg.routes[0].upstream == "https://backend.example:8443/v2"
    assert cfg.routes[1].upstream == "http://127.0.0.1:9001"


def test_env_override_names_are_case_insensitive_and_dashes_match_underscores(tmp_path: Path) -> None:
    raw = base()
    raw["keyrings"] = {"plugin-to-backend": {"path": "p.json"}}
    for route in raw["routes"]:
        route["keyring"] = "plugin-to-backend"
    path = write_config(tmp_path, raw)
    environ = {
        "HMAC_GATEWAY__KEYRINGS__PLUGIN_TO_BACKEND__REFRESH_INTERVAL_SECONDS": "7.5",
        "hmac_gateway__gateway__log_level": "debug",
        "HMAC_GATEWAY__LISTENERS__VERIFY__ALLOW_NON_LOOPBACK": "true",
    }
    cfg = config_mod.load(path, environ=environ)
    assert cfg.keyrings["plugin-to-backend"].refresh_interval == 7.5
    assert cfg.log_level == "debug"
    assert cfg.listeners["verify"].allow_non_loopback is True
    assert len(cfg.overrides) == 3


def test_env_override_with_a_bad_list_index_is_reported(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    with pytest.raises(ConfigError) as info:
        config_mod.load(
            path, environ={"HMAC_GATEWAY__ROUTES__7__UPSTREAM": "http://x", "HMAC_GATEWAY__ROUTES__A__X": "1"}
        )
    problems = info.value.problems
    assert "HMAC_GATEWAY__ROUTES__7__UPSTREAM: '7' is not an index of a list of 2" in problems
    assert "HMAC_GATEWAY__ROUTES__A__X: 'A' is not an index of a list of 2" in problems
    assert len(problems) == 2


def test_env_override_of_an_unknown_section_is_reported(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, environ={"HMAC_GATEWAY__NOPE__PORT": "1", "HMAC_GATEWAY__LISTENERS__PUBLIC__PORT": "2"})
    problems = info.value.problems
    assert "HMAC_GATEWAY__NOPE__PORT: no [nope] section in the config file" in problems
    assert "HMAC_GATEWAY__LISTENERS__PUBLIC__PORT: no [public] section in the config file" in problems


def test_env_override_of_an_unknown_key_or_wrong_type_is_reported(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    environ = {"HMAC_GATEWAY__LISTENERS__SIGN__PROT": "1", "HMAC_GATEWAY__LISTENERS__VERIFY__PORT": "eighty"}
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, environ=environ)
    assert "[listeners.sign]: unknown key 'prot'" in info.value.problems
    assert "[listeners.verify].port: must be an integer, got 'eighty'" in info.value.problems


def test_env_override_cannot_replace_a_whole_list_item(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, environ={"HMAC_GATEWAY__ROUTES__0": "{}"})
    assert info.value.problems == ["HMAC_GATEWAY__ROUTES__0: cannot replace a whole list item"]


def test_env_override_can_make_a_sign_listener_public_only_with_permission(tmp_path: Path) -> None:
    path = write_config(tmp_path, base())
    with pytest.raises(ConfigError, match="carries a sign route"):
        config_mod.load(path, environ={"HMAC_GATEWAY__LISTENERS__SIGN__HOST": "0.0.0.0"})


# -- files and paths ---------------------------------------------------------------------------


def test_relative_keyring_path_is_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "etc", base())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = config_mod.load(Path("etc/gateway.toml"), environ={})
    assert cfg.keyrings["main"].path == tmp_path / "etc" / "keys" / "main.json"
    assert cfg.keyrings["main"].path.is_absolute()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert config_mod.load(tmp_path / "etc" / "gateway.toml", environ={}).keyrings["main"].path == (
        tmp_path / "etc" / "keys" / "main.json"
    )


def test_absolute_keyring_path_is_kept(tmp_path: Path) -> None:
    raw = base()
    raw["keyrings"]["main"]["path"] = "/srv/keys/main.json"
    cfg = config_mod.load(write_config(tmp_path, raw), environ={})
    assert cfg.keyrings["main"].path == Path("/srv/keys/main.json")


def test_missing_file_and_invalid_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        config_mod.load(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[listeners\nport = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        config_mod.load(bad, environ={})
    assert str(bad) in info.value.problems[0]
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config_mod.load(binary, environ={})


# -- public view -----------------------------------------------------------------------------

# A field *named* like a secret value (``secret``, ``api_token``); ``secret_id`` or ``seal_key_env`` name
# where a secret lives, which is fine to show.
SECRET_LOOKING = re.compile(
    r"(^|_)(secret|secrets|password|passwd|token|credentials?|material|private_key|api_key|master_key)$", re.IGNORECASE
)


def _all_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value] + [k2 for v in value.values() for k2 in _all_keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in _all_keys(v)]
    return []


@pytest.mark.parametrize("name", ["gateway.toml", "production-example.toml"])
def test_public_dict_is_json_and_holds_nothing_secret_looking(name: str) -> None:
    master_key_value = "bWFzdGVyLWtleS12YWx1ZS0zMi1ieXRlcy1sb25nISE="
    environ = {"HMAC_GATEWAY_MASTER_KEY": master_key_value}
    public = config_mod.load(SHIPPED / name, environ=environ).to_public_dict()
    text = json.dumps(public)
    assert json.loads(text) == public
    assert [k for k in _all_keys(public) if SECRET_LOOKING.search(k)] == []
    assert master_key_value not in text
    assert [r["name"] for r in public["routes"]] == [r.name for r in config_mod.load(SHIPPED / name, environ={}).routes]
    assert set(public) == {"source", "env_overrides", "gateway", "listeners", "keyrings", "routes", "echo"}


# -- check-config ----------------------------------------------------------------------------


def test_check_config_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, base())
    assert cli.run(["--config", str(path), "check-config"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # status goes to stderr; stdout is for data
    assert "config OK" in captured.err
    assert "2 listeners, 2 routes, 1 keyrings" in captured.err


@pytest.mark.parametrize("name", ["gateway.toml", "production-example.toml"])
def test_check_config_accepts_the_shipped_configs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["--config", str(SHIPPED / name), "check-config"]) == 0
    assert "config OK" in capsys.readouterr().err


def test_check_config_reports_every_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = base()
    raw["gateway"]["colour"] = "blue"
    raw["listeners"]["sign"]["host"] = "0.0.0.0"
    raw["routes"][1]["upstream"] = "http://backend.example/?q=1"
    raw["routes"][1]["required_components"] = ["@Method"]
    path = write_config(tmp_path, raw)
    assert cli.run(["--config", str(path), "check-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4 problems" in captured.err
    for fragment in (
        "[gateway]: unknown key 'colour'",
        "[listeners.sign]: carries a sign route but binds 0.0.0.0",
        "[[routes]] in.upstream: must not carry a query",
        "[[routes]] in.required_components: component name '@Method' is not lower case",
    ):
        assert fragment in captured.err
    assert "Traceback" not in captured.err


def test_check_config_single_problem_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = base()
    raw["routes"][0]["keyring"] = "nope"
    assert cli.run(["--config", str(write_config(tmp_path, raw)), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err == "hmac-gateway: config error: [[routes]] out.keyring: 'nope' is not a configured keyring\n"


@pytest.mark.parametrize("content", [None, "not = [toml"])
def test_check_config_on_missing_or_unparsable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    path = tmp_path / "gateway.toml"
    if content is not None:
        path.write_text(content)
    assert cli.run(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "Traceback" not in err


def test_check_config_json_prints_the_effective_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, base())
    assert cli.run(["--config", str(path), "check-config", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["schema"] == 1
    assert [r["name"] for r in data["routes"]] == ["out", "in"]
    assert data["routes"][0]["upstream"] == "http://127.0.0.1:9000"
    assert data["routes"][0]["components"] == ["@method", "@authority", "@path", "@query", "content-digest"]
    assert data["keyrings"]["main"]["path"] == str(tmp_path / "keys" / "main.json")
    assert data["source"] == str(path)
    assert "config OK" in captured.err


def test_client_token_env_must_name_a_set_long_enough_token() -> None:
    raw = base()
    raw["listeners"]["sign"]["client_token_env"] = "SIGN_TOKEN"
    problems = problems_of(raw)
    assert any("$SIGN_TOKEN must hold a token of at least 16 characters (it is unset)" in p for p in problems)
    cfg = config_mod.parse(raw, base_dir=Path("/tmp"), environ={"SIGN_TOKEN": "t" * 32})
    assert cfg.listeners["sign"].client_token == "t" * 32
    with pytest.raises(ConfigError, match="too short"):
        config_mod.parse(raw, base_dir=Path("/tmp"), environ={"SIGN_TOKEN": "short"})


# -- every setting declared once; the README's tables are rendered from the declarations -------


def test_the_readme_tables_are_the_declarations() -> None:
    from gateway.config import docs

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert docs.blocks(readme) == docs.tables(), "run: python -m gateway.config.docs README.md"


def test_every_declared_setting_is_read_with_its_declared_default(tmp_path: Path) -> None:
    """An empty table yields exactly the declared defaults: the parser restates none of them."""
    from dataclasses import MISSING

    from gateway.config.declare import declared

    raw = {
        "keyrings": {"r": {"path": "r.json"}},
        "listeners": {"l": {}},
        "routes": [{"listener": "l", "mode": "verify", "upstream": "http://127.0.0.1:9", "keyring": "r"}],
        "echo": {"port": 0},
    }
    cfg = config_mod.parse(raw, base_dir=tmp_path)
    objects = {
        config_mod.GatewayConfig: cfg,
        config_mod.ListenerConfig: cfg.listeners["l"],
        config_mod.KeyringConfig: cfg.keyrings["r"],
        config_mod.RouteConfig: cfg.routes[0],
    }
    for cls, obj in objects.items():
        for attr, _, default, _ in declared(cls):
            if default is MISSING or attr in ("path", "port"):
                continue  # required values, and the ones this config sets
            assert getattr(obj, attr) == (None if attr == "tag" and default == "" else default), (cls, attr)
