"""The ``hmac-gateway`` command as an operator runs it (gateway/cli/, gateway/exitcodes.py):
the real entry points in subprocesses, real keyring files, moto's Secrets Manager over HTTP.
Assertions are on exact lines and exit codes, and that no secret reaches any output."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from gateway import exitcodes
from gateway.cli import COMMANDS
from gateway.cli.base import Command, invoke
from gateway.clock import to_rfc3339
from gateway.keys import sealing
from tests.helpers import random_secret
from tests.moto_faults import AWS_ENV, FaultyMotoServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENTRY_POINT = Path(sys.executable).parent / "hmac-gateway"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


def write_ring(path: Path, document: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    os.chmod(path, 0o600)
    return path


def config(tmp: Path, keyrings: str, routes_keyring: str = "demo", extra: str = "") -> Path:
    path = tmp / "gateway.toml"
    path.write_text(
        f"""{keyrings}
[listeners.sign]
port = 0
[[routes]]
name = "out"
listener = "sign"
mode = "sign"
upstream = "http://127.0.0.1:9"
keyring = "{routes_keyring}"
{extra}"""
    )
    return path


def file_ring(name: str = "demo", path: str = "keyrings/demo.json", create: bool = False) -> str:
    return f'[keyrings.{name}]\npath = "{path}"\ncreate = {str(create).lower()}\n'


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- entry points ---------------------------------------------------------------------------------


def test_python_dash_m_and_the_installed_entry_point_both_run(tmp_path: Path) -> None:
    via_module = cli("--version", cwd=tmp_path)
    via_script = subprocess.run(
        [str(ENTRY_POINT), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    for result in (via_module, via_script):
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"hmac-gateway \d+\.\d+\.\d+\n", result.stdout)


def test_help_lists_every_registered_command(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command.name)}\s+{re.escape(command.help)}", result.stdout, re.M)


def test_an_unknown_command_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    result = cli("nosuchcommand", cwd=tmp_path)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert result.stdout == ""
    assert "invalid choice: 'nosuchcommand'" in result.stderr


# -- one error format for every command -------------------------------------------------------------


def test_wrapper_prints_one_line_for_an_unexpected_error_and_a_traceback_only_with_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def boom(_: argparse.Namespace) -> int:
        raise RuntimeError("internal detail that must not be shown")

    command = Command("boom", "fails", lambda _: None, boom)
    assert invoke(command, argparse.Namespace(debug=False)) == exitcodes.FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "hmac-gateway: unexpected error (RuntimeError); run with --debug for details\n"
    with pytest.raises(RuntimeError):
        invoke(command, argparse.Namespace(debug=True))


def _bad_config(tmp: Path, problems: int) -> Path:
    extra = 'colour = "blue"\n' if problems > 1 else ""  # an unknown key in the last route
    return config(tmp, file_ring(), routes_keyring="nope", extra=extra)


@pytest.mark.parametrize(
    ("problems", "expected"),
    [
        (1, ["hmac-gateway: config error: [[routes]] out.keyring: 'nope' is not a configured keyring"]),
        (
            2,
            [
                "hmac-gateway: config error: 2 problems:",
                "  - [[routes]] out.keyring: 'nope' is not a configured keyring",
                "  - [[routes]] out: unknown key 'colour'",
            ],
        ),
    ],
    ids=["one-problem", "two-problems"],
)
def test_serve_its_workers_and_check_config_print_config_errors_identically(
    tmp_path: Path, problems: int, expected: list[str]
) -> None:
    cfg = _bad_config(tmp_path, problems)
    as_a_worker = "import sys; from gateway.server import serve_process; sys.exit(serve_process(sys.argv[1], True))"
    worker = subprocess.run(  # what each --workers process runs: no CLI wrapper around it
        [sys.executable, "-c", as_a_worker, str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    results = [
        cli("--config", str(cfg), "check-config", cwd=tmp_path),
        cli("--config", str(cfg), "serve", cwd=tmp_path),
        cli("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path),
        cli("--config", str(cfg), "keys", cwd=tmp_path),
        worker,
    ]
    for result in results:
        assert result.returncode == exitcodes.CONFIG_ERROR
        assert result.stdout == ""
        assert result.stderr.splitlines() == expected


def test_serve_and_keys_report_a_missing_keyring_in_the_same_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, file_ring())
    missing = tmp_path / "keyrings" / "demo.json"
    expected = f"hmac-gateway: keyring 'demo' could not be loaded: file:{missing}: keyring file does not exist"
    keys = cli("--config", str(cfg), "keys", cwd=tmp_path)
    serve = cli("--config", str(cfg), "serve", cwd=tmp_path)
    assert (keys.returncode, serve.returncode) == (exitcodes.KEYRING_ERROR, exitcodes.KEYRING_ERROR)
    assert keys.stderr.splitlines() == [expected]
    assert keys.stdout == ""
    assert serve.stderr.splitlines()[-1] == expected


# -- keys ------------------------------------------------------------------------------------------


def test_keys_never_creates_a_missing_keyring_even_with_create_true(tmp_path: Path) -> None:
    cfg = config(tmp_path, file_ring(create=True))
    before = listing(tmp_path)
    for args in (("keys",), ("keys", "--json")):
        result = cli("--config", str(cfg), *args, cwd=tmp_path)
        assert result.returncode == exitcodes.KEYRING_ERROR
        missing = tmp_path / "keyrings" / "demo.json"
        assert result.stderr.splitlines() == [
            f"hmac-gateway: keyring 'demo' could not be loaded: file:{missing}: keyring file does not exist"
        ]
        assert listing(tmp_path) == before  # nothing written: no keyring, no directory, no lock file


def test_serve_refusing_its_arguments_writes_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, file_ring(create=True), extra="[echo]\nport = 0\n")
    before = listing(tmp_path)
    result = cli("--config", str(cfg), "serve", "--workers", "2", cwd=tmp_path)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert result.stderr.splitlines() == [
        "hmac-gateway: config error: [listeners.sign].port: port 0 cannot be shared by --workers"
    ]
    assert listing(tmp_path) == before


def _lifecycle(now: float) -> tuple[dict[str, Any], list[str]]:
    secrets = [random_secret() for _ in range(4)]
    margin = 30  # seconds: the CLI reads the clock a little later than this test does
    doc = {
        "hmac_gateway_keyring": 1,
        "keys": [
            {
                "id": "key-gone",
                "secret": secrets[0],
                "state": "retiring",
                "created_at": to_rfc3339(now - 40 * 86400),
                "expires_at": to_rfc3339(now - 3600),
            },
            {
                "id": "key-old",
                "secret": secrets[1],
                "state": "retiring",
                "created_at": to_rfc3339(now - (3 * 86400 + 4 * 3600 + margin)),
                "promoted_at": to_rfc3339(now - (3 * 86400)),
                "expires_at": to_rfc3339(now + 5 * 3600 + 12 * 60 + margin),
            },
            {
                "id": "key-now",
                "secret": secrets[2],
                "state": "primary",
                "created_at": to_rfc3339(now - (2 * 3600 + 7 * 60 + margin)),
                "promoted_at": to_rfc3339(now - 3600),
            },
            {
                "id": "key-next",
                "secret": secrets[3],
                "state": "pending",
                "created_at": to_rfc3339(now - (20 * 60 + margin)),
            },
        ],
    }
    return doc, secrets


def test_keys_shows_state_age_and_expiry_of_every_key_and_no_secret(tmp_path: Path) -> None:
    now = float(int(time.time()))
    lifecycle, lifecycle_secrets = _lifecycle(now)
    flat_secrets = {"key-v1": random_secret(), "key-v2": random_secret()}
    life_path = write_ring(tmp_path / "keyrings" / "life.json", lifecycle)
    flat_path = write_ring(tmp_path / "keyrings" / "flat.json", flat_secrets)
    cfg = config(tmp_path, file_ring("life", "keyrings/life.json") + file_ring("flat", "keyrings/flat.json"), "life")
    before = {p: p.read_bytes() for p in (life_path, flat_path)}
    text = cli("--config", str(cfg), "keys", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stderr == ""
    gone = lifecycle["keys"][0]["expires_at"]
    old = lifecycle["keys"][1]["expires_at"]
    assert text.stdout.splitlines() == [
        f"life  (lifecycle, signing with key-now, file:{life_path})",
        "  KEY       STATE     AGE      EXPIRES",
        f"  key-gone  retiring  40d 0h   {gone} (expired: no longer verifies)",
        f"  key-old   retiring  3d 4h    {old} (in 5h 12m)",
        "  key-now   primary   2h 7m    -",
        "  key-next  pending   20m      -",
        "  next: rotate would remove key-gone, promote key-next now",
        f"flat  (flat, signing with key-v2, file:{flat_path})",
        "  KEY     STATE     AGE      EXPIRES",
        "  key-v1  retiring  -        -",
        "  key-v2  primary   -        -",
        "  next: rotate would add a new pending key now (upgrading the flat map to a lifecycle document)",
    ]

    as_json = cli("--config", str(cfg), "keys", "--json", cwd=tmp_path)
    assert as_json.returncode == 0 and as_json.stderr == ""
    doc = json.loads(as_json.stdout)
    assert doc["schema"] == 1
    assert set(doc) == {"schema", "keyrings"}
    life = doc["keyrings"]["life"]
    assert (life["format"], life["signing_key"], life["source"]) == ("lifecycle", "key-now", f"file:{life_path}")
    rows = {k["id"]: k for k in life["keys"]}
    assert [k["id"] for k in life["keys"]] == ["key-gone", "key-old", "key-now", "key-next"]
    assert rows["key-gone"]["verifies_now"] is False and rows["key-gone"]["expires_in_seconds"] < 0
    assert rows["key-old"]["state"] == "retiring" and rows["key-old"]["verifies_now"] is True
    assert 5 * 3600 + 12 * 60 <= rows["key-old"]["expires_in_seconds"] <= 5 * 3600 + 12 * 60 + 30
    assert 20 * 60 + 30 <= rows["key-next"]["age_seconds"] <= 20 * 60 + 60
    assert rows["key-now"]["promoted_at"] == lifecycle["keys"][2]["promoted_at"]
    assert [k["state"] for k in doc["keyrings"]["flat"]["keys"]] == ["retiring", "primary"]
    assert doc["keyrings"]["flat"]["keys"][0]["age_seconds"] is None
    assert life["rotation"]["actions"] == ["remove", "demote", "promote"]
    assert doc["keyrings"]["flat"]["rotation"]["actions"] == ["upgrade", "add"]

    for result in (text, as_json):
        for secret in [*lifecycle_secrets, *flat_secrets.values()]:
            assert secret not in result.stdout + result.stderr
    assert {p: p.read_bytes() for p in (life_path, flat_path)} == before  # listing wrote nothing


def test_keys_lists_what_loads_and_names_what_does_not(tmp_path: Path) -> None:
    good = write_ring(tmp_path / "keyrings" / "good.json", {"k1": random_secret()})
    bad = write_ring(tmp_path / "keyrings" / "bad.json", {"tiny": "too-short-secret"})
    cfg = config(tmp_path, file_ring("good", "keyrings/good.json") + file_ring("bad", "keyrings/bad.json"), "good")
    result = cli("--config", str(cfg), "keys", cwd=tmp_path)
    assert result.returncode == exitcodes.KEYRING_ERROR
    assert result.stdout.splitlines()[0] == f"good  (flat, signing with k1, file:{good})"
    [line] = result.stderr.splitlines()
    assert line.startswith("hmac-gateway: keyring 'bad' could not be loaded: keyring 'bad', key 'tiny'")
    assert "too-short-secret" not in result.stdout + result.stderr
    as_json = cli("--config", str(cfg), "keys", "--json", cwd=tmp_path)
    assert as_json.returncode == exitcodes.KEYRING_ERROR
    doc = json.loads(as_json.stdout)
    assert list(doc["keyrings"]) == ["good"]
    assert doc["errors"]["bad"] == line.removeprefix("hmac-gateway: ")
    assert "too-short-secret" not in as_json.stdout + as_json.stderr
    assert bad.read_text() == json.dumps({"tiny": "too-short-secret"})


def test_keys_reads_a_secrets_manager_keyring_without_writing_to_it(moto: FaultyMotoServer, tmp_path: Path) -> None:
    secret_values = [random_secret(), random_secret()]
    name = f"hmac-gateway/test/cli-{uuid.uuid4().hex[:8]}"
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
    sm.create_secret(Name=name, SecretString=json.dumps({"key-a": secret_values[0], "key-b": secret_values[1]}))
    cfg = config(
        tmp_path,
        f'[keyrings.p2b]\nsource = "aws-secretsmanager"\nsecret_id = "{name}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{moto.endpoint}"\nmax_attempts = 1\n',
        "p2b",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | AWS_ENV
    calls_before = dict(moto.injector.calls)
    result = cli("--config", str(cfg), "keys", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"p2b  (flat, signing with key-b, aws-secretsmanager:{name})",
        "  KEY    STATE     AGE      EXPIRES",
        "  key-a  retiring  -        -",
        "  key-b  primary   -        -",
        "  next: rotate would add a new pending key now (upgrading the flat map to a lifecycle document)",
    ]
    new_calls = {a: n - calls_before.get(a, 0) for a, n in moto.injector.calls.items() if n != calls_before.get(a, 0)}
    assert new_calls == {"GetSecretValue": 1}  # one read, no write of any kind
    for secret in secret_values:
        assert secret not in result.stdout + result.stderr


# -- exit codes: module and README in step ------------------------------------------------------------


def _module_codes() -> dict[str, int]:
    return {n: v for n, v in vars(exitcodes).items() if n.isupper() and isinstance(v, int) and n != "PROG"}


def _readme_codes() -> dict[int, str]:
    section = README.read_text().split("## Commands and exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_every_exit_code_is_in_the_readme_table_and_nothing_else_is() -> None:
    codes = _module_codes()
    assert len(set(codes.values())) == len(codes)  # no two names for one code
    assert set(_readme_codes()) == set(codes.values())


def test_every_command_is_in_the_readme() -> None:
    section = README.read_text().split("## Commands and exit codes", 1)[1].split("\n## ", 1)[0]
    for command in COMMANDS:
        assert re.search(rf"^  {re.escape(command.name)}\b", section, re.M), command.name


def test_keys_opens_a_sealed_keyring_with_its_master_key_and_names_the_variable_without_it(tmp_path: Path) -> None:
    master = os.urandom(32)
    secret = random_secret()
    ring = tmp_path / "keyrings" / "demo.json"
    ring.parent.mkdir()
    ring.write_bytes(sealing.seal(json.dumps({"key-v1": secret}).encode(), master))
    os.chmod(ring, 0o600)
    cfg = config(tmp_path, file_ring() + 'seal_key_env = "TEST_CLI_MASTER_KEY"\n')
    master_b64 = base64.b64encode(master).decode()
    env = {k: v for k, v in os.environ.items() if k != "TEST_CLI_MASTER_KEY"}
    opened = cli("--config", str(cfg), "keys", cwd=tmp_path, env=env | {"TEST_CLI_MASTER_KEY": master_b64})
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.splitlines()[0] == f"demo  (flat, signing with key-v1, file:{ring})"
    refused = cli("--config", str(cfg), "keys", cwd=tmp_path, env=env)
    assert refused.returncode == exitcodes.KEYRING_ERROR
    assert refused.stderr.splitlines() == [
        "hmac-gateway: keyring 'demo' could not be loaded: "
        "the keyring is sealed but $TEST_CLI_MASTER_KEY (its master key) is not set"
    ]
    for result in (opened, refused):
        assert secret not in result.stdout + result.stderr
        assert master_b64 not in result.stdout + result.stderr
    assert sealing.is_sealed(ring.read_bytes())
