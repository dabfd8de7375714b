"""``hmac-gateway sign`` and ``verify`` (gateway/cli/sign.py, verify.py): RFC 9421 B.2.5 from
documented inputs, sign -> verify round trips per scheme, which check failed and its reason,
``--explain``, exit codes, and never a secret in any output."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import standardwebhooks

from gateway import exitcodes
from gateway.cli.main import run
from tests.helpers import load_vector, random_secret

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"event": "paid",  "amount": 42}'


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def ring(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    secrets = {"key-v1": "whsec_" + base64.b64encode(os.urandom(32)).decode(), "key-v2": random_secret()}
    return write(tmp_path / "ring.json", json.dumps(secrets)), secrets


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sign_reproduces_rfc9421_b25_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rfc = load_vector("rfc9421-b25.json")
    case = load_vector("cli-sign-b25.json")
    keyring = write(tmp_path / "b25.json", json.dumps({rfc["key_id"]: rfc["key_base64"]}))
    body = write(tmp_path / "body.json", rfc["request"]["body"])
    code, out, err = cli(capsys, *case["argv"], "--keyring-file", str(keyring), "--body", str(body))
    assert (code, err) == (0, "")
    assert out.splitlines() == case["stdout"]
    assert rfc["key_base64"] not in out


def capture(head: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [head, "Host: hooks.example.com", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def signed(capsys: pytest.CaptureFixture[str], keyring: Path, body: Path, *extra: str) -> dict[str, str]:
    code, out, _ = cli(
        capsys,
        "sign",
        "POST",
        "http://hooks.example.com/in?x=1",
        "--keyring-file",
        str(keyring),
        "--body",
        str(body),
        "--json",
        *extra,
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == 1
    headers: dict[str, str] = doc["headers"]
    return headers


@pytest.mark.parametrize("scheme", ["rfc9421", "standard-webhooks", "github", "stripe", "slack"])
def test_what_sign_prints_verifies_and_a_changed_body_fails_the_body_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ring: tuple[Path, dict[str, str]], scheme: str
) -> None:
    keyring, secrets = ring
    body = write(tmp_path / "body", BODY)
    key = "key-v1" if scheme == "standard-webhooks" else "key-v2"
    headers = signed(capsys, keyring, body, "--scheme", scheme, "--key-id", key)
    cap = write(tmp_path / "cap", capture("POST /in?x=1 HTTP/1.1", headers, BODY))
    code, out, _ = cli(capsys, "verify", str(cap), "--scheme", scheme, "--keyring-file", str(keyring))
    assert (code, out.splitlines()[0].split(",")[:2]) == (0, [f"verified: scheme {scheme}", f" key {key!r}"])
    tampered = write(tmp_path / "cap2", capture("POST /in?x=1 HTTP/1.1", headers, BODY + b" "))
    code, out, err = cli(capsys, "verify", str(tampered), "--scheme", scheme, "--keyring-file", str(keyring))
    assert code == exitcodes.VERIFY_FAILED
    reason = "digest_mismatch" if scheme == "rfc9421" else "signature_mismatch"
    assert out.startswith(f"NOT verified: scheme {scheme}: body check failed: {reason}\n")
    for secret in secrets.values():
        assert secret not in out + err and secret.removeprefix("whsec_") not in out + err


def test_sign_standard_webhooks_output_verifies_with_the_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ring: tuple[Path, dict[str, str]]
) -> None:
    keyring, secrets = ring
    headers = signed(
        capsys, keyring, write(tmp_path / "b", BODY), "--scheme", "standard-webhooks", "--key-id", "key-v1"
    )
    standardwebhooks.Webhook(secrets["key-v1"]).verify(BODY, headers, json_parse=False)


def test_verify_names_the_header_check_and_now_replays_a_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ring: tuple[Path, dict[str, str]]
) -> None:
    keyring, _ = ring
    old = str(int(time.time()) - 3600)
    headers = signed(capsys, keyring, write(tmp_path / "b", BODY), "--scheme", "slack", "--created", old)
    cap = write(tmp_path / "cap", capture("POST /in HTTP/1.1", headers, BODY))
    code, out, _ = cli(capsys, "verify", str(cap), "--scheme", "slack", "--keyring-file", str(keyring))
    assert code == exitcodes.VERIFY_FAILED
    assert out.startswith("NOT verified: scheme slack: headers check failed: stale\n")
    code, out, _ = cli(capsys, "verify", str(cap), "--scheme", "slack", "--keyring-file", str(keyring), "--now", old)
    assert code == 0


def test_explain_prints_the_signature_base_or_the_signed_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ring: tuple[Path, dict[str, str]]
) -> None:
    keyring, _ = ring
    body = write(tmp_path / "b", BODY)
    headers = signed(capsys, keyring, body)  # rfc9421
    headers["Signature"] = headers["Signature"][:-6] + "AAAA=:"
    cap = write(tmp_path / "cap", capture("POST /in?x=1 HTTP/1.1", headers, BODY))
    code, out, _ = cli(capsys, "verify", str(cap), "--keyring-file", str(keyring), "--explain")
    assert code == exitcodes.VERIFY_FAILED and "body check failed: signature_mismatch" in out
    assert '"@authority": hooks.example.com\n' in out and '"@signature-params": (' in out
    headers = signed(capsys, keyring, body, "--scheme", "standard-webhooks", "--key-id", "key-v1", "--message-id", "m1")
    cap = write(tmp_path / "cap", capture("POST /in HTTP/1.1", headers, BODY))
    code, out, _ = cli(
        capsys, "verify", str(cap), "--scheme", "standard-webhooks", "--keyring-file", str(keyring), "--explain"
    )
    assert code == 0
    assert f"--- signed payload ---\nm1.{headers['webhook-timestamp']}.{BODY.decode()}\n---" in out


def test_verify_as_a_configured_route_from_stdin_in_a_process(
    tmp_path: Path, ring: tuple[Path, dict[str, str]]
) -> None:
    keyring, secrets = ring
    (tmp_path / "gateway.toml").write_text(
        f"""
[keyrings.demo]
path = "{keyring}"
[listeners.verify]
port = 0
[[routes]]
name = "gh"
listener = "verify"
mode = "verify"
upstream = "http://127.0.0.1:9"
keyring = "demo"
scheme = "github"
require_delivery_id = true
"""
    )
    sig = "sha256=" + hmac.new(secrets["key-v2"].encode(), BODY, hashlib.sha256).hexdigest()
    argv = [sys.executable, "-m", "gateway", "--config", str(tmp_path / "gateway.toml"), "verify", "-", "--route", "gh"]
    result = subprocess.run(
        [*argv, "--json"],
        input=capture("POST /in HTTP/1.1", {"X-Hub-Signature-256": sig}, BODY),
        capture_output=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == exitcodes.VERIFY_FAILED, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["verified"], doc["failed_check"], doc["reason"]) == (False, "headers", "missing_parameter")
    with_id = capture("POST /in HTTP/1.1", {"X-Hub-Signature-256": sig, "X-GitHub-Delivery": "d-1"}, BODY)
    result = subprocess.run(argv, input=with_id, capture_output=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.decode().startswith("verified: scheme github, key 'key-v2'")
    assert secrets["key-v2"].encode() not in result.stdout + result.stderr


def test_sign_refuses_a_missing_key_id_and_a_bad_header_argument_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ring: tuple[Path, dict[str, str]]
) -> None:
    keyring, _ = ring
    code, out, err = cli(capsys, "sign", "GET", "http://h/", "--keyring-file", str(keyring), "--key-id", "nope")
    assert (code, out) == (exitcodes.CONFIG_ERROR, "") and "no key 'nope'" in err
    code, out, err = cli(capsys, "sign", "GET", "http://h/", "--keyring-file", str(keyring), "-H", "no colon")
    assert code == exitcodes.CONFIG_ERROR and "must read 'Name: value'" in err and "Traceback" not in err
