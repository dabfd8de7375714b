"""Master-key rotation of sealed file keyrings: ``reseal`` through the real entry point, a file
source that accepts the previous key during the change, and a gateway that keeps serving
across it. Real files throughout; the keys live only in environment variables."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod
from gateway.cli.reseal import reseal as do_reseal
from gateway.errors import ConfigError, SealError
from gateway.keys import sealing
from gateway.keys.formats import parse_keyring
from gateway.keys.sources import FileSource
from tests.conftest import GatewayFactory, Recorder
from tests.helpers import random_secret
from tests.support import lib_signed_headers, post

NEW_ENV, OLD_ENV = "TEST_SEAL_KEY_NEW", "TEST_SEAL_KEY_OLD"
OLD, NEW, STRANGER = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def lifecycle(*ids: str) -> dict[str, Any]:
    keys = [
        {"id": i, "secret": random_secret(), "state": "retiring", "expires_at": "2099-01-01T00:00:00Z"} for i in ids
    ]
    keys[-1] = {"id": ids[-1], "secret": random_secret(), "state": "primary"}
    return {"hmac_gateway_keyring": 1, "keys": keys}


def seal_to(path: Path, document: dict[str, Any], master: bytes) -> bytes:
    plaintext = json.dumps(document).encode()
    path.write_bytes(sealing.seal(plaintext, master))
    os.chmod(path, 0o600)
    return plaintext


def write_config(tmp: Path, ring: Path, *, previous: bool = True) -> Path:
    previous_line = f'previous_seal_key_env = "{OLD_ENV}"' if previous else ""
    path = tmp / "gateway.toml"
    path.write_text(
        f"""
[keyrings.partner]
path = "{ring}"
seal_key_env = "{NEW_ENV}"
{previous_line}

[listeners.verify]
port = 0

[[routes]]
name = "in"
listener = "verify"
mode = "verify"
upstream = "http://127.0.0.1:9"
keyring = "partner"
"""
    )
    return path


def reseal(tmp: Path, config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, NEW_ENV: b64(NEW), OLD_ENV: b64(OLD), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "reseal", "--keyring", "partner", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,
        env=environ,
        check=False,
    )


def no_key_in(*texts: str) -> None:
    for text in texts:
        for key in (OLD, NEW):
            assert b64(key) not in text


def test_dry_run_then_reseal_then_nothing_left_to_do(tmp_path: Path) -> None:
    ring = tmp_path / "partner.json"
    document = lifecycle("key-a", "key-b")
    plaintext = seal_to(ring, document, OLD)
    sealed_before = ring.read_bytes()
    config = write_config(tmp_path, ring)

    dry = reseal(tmp_path, config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would re-seal" in dry.stdout and f"from ${OLD_ENV} to ${NEW_ENV}" in dry.stdout
    assert ring.read_bytes() == sealed_before  # nothing written

    done = reseal(tmp_path, config, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["action"] == "resealed" and report["keys"] == ["key-a", "key-b"] and report["schema"] == 1
    assert sealing.unseal(ring.read_bytes(), NEW, where="t") == plaintext  # same keyring, byte for byte
    with pytest.raises(SealError, match="wrong master key"):
        sealing.unseal(ring.read_bytes(), OLD, where="t")
    assert ring.stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.glob(".partner.json.*.tmp")) == []

    again = reseal(tmp_path, config)
    assert again.returncode == 0 and "nothing to do: already sealed under" in again.stdout
    no_key_in(dry.stdout, dry.stderr, done.stdout, done.stderr, again.stdout, again.stderr)


def test_the_pre_flight_refuses_a_file_the_old_key_does_not_open_and_writes_nothing(tmp_path: Path) -> None:
    ring = tmp_path / "partner.json"
    seal_to(ring, lifecycle("key-a"), STRANGER)
    before = ring.read_bytes()
    result = reseal(tmp_path, write_config(tmp_path, ring), "--dry-run")
    assert result.returncode == 3
    assert "wrong master key" in result.stderr and f"${NEW_ENV} nor ${OLD_ENV}" in result.stderr
    assert reseal(tmp_path, write_config(tmp_path, ring)).returncode == 3
    assert ring.read_bytes() == before


def test_wrong_key_and_corrupt_file_stay_distinct_with_two_keys(tmp_path: Path) -> None:
    ring = tmp_path / "partner.json"
    seal_to(ring, lifecycle("key-a"), OLD)
    envelope = json.loads(ring.read_bytes())
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[3] ^= 1
    envelope["ciphertext"] = b64(bytes(ciphertext))
    ring.write_text(json.dumps(envelope))
    result = reseal(tmp_path, write_config(tmp_path, ring))
    assert result.returncode == 3 and "corrupt (authentication failed)" in result.stderr


@pytest.mark.parametrize(
    ("previous", "env", "expected"),
    [
        (False, {}, "previous_seal_key_env: not set"),
        (True, {OLD_ENV: ""}, f"${OLD_ENV} (its master key) is not set"),
        (True, {OLD_ENV: b64(NEW)}, "hold the same master key"),
    ],
)
def test_refusals_before_the_file_is_touched(
    tmp_path: Path, previous: bool, env: dict[str, str], expected: str
) -> None:
    ring = tmp_path / "partner.json"
    seal_to(ring, lifecycle("key-a"), OLD)
    before = ring.read_bytes()
    result = reseal(tmp_path, write_config(tmp_path, ring, previous=previous), env=env)
    assert result.returncode in (2, 3) and expected in result.stderr, result.stderr
    assert ring.read_bytes() == before


def test_a_file_source_opens_either_key_and_always_writes_under_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NEW_ENV, b64(NEW))
    monkeypatch.setenv(OLD_ENV, b64(OLD))
    ring = tmp_path / "partner.json"
    plaintext = seal_to(ring, lifecycle("key-a"), OLD)
    source = FileSource("partner", ring, seal_key_env=NEW_ENV, previous_seal_key_env=OLD_ENV)
    document, opened_with = source.load_sealed()
    assert document.data == plaintext and opened_with == OLD_ENV
    # a rotation writing during the change seals under the new key
    updated = json.dumps(lifecycle("key-a", "key-b")).encode()
    source.write(updated, expected_version=document.version_id)
    assert sealing.unseal(ring.read_bytes(), NEW, where="t") == updated
    assert FileSource("partner", ring, seal_key_env=NEW_ENV).load().data == updated  # the old key is no longer needed
    with pytest.raises(SealError):
        FileSource("partner", ring, seal_key_env=OLD_ENV).load()


def test_config_requires_seal_key_env_with_previous_seal_key_env(tmp_path: Path) -> None:
    raw = {
        "keyrings": {"r": {"path": str(tmp_path / "r.json"), "previous_seal_key_env": OLD_ENV}},
        "listeners": {"v": {"port": 0}},
        "routes": [{"name": "in", "listener": "v", "mode": "verify", "upstream": "http://127.0.0.1:9", "keyring": "r"}],
    }
    with pytest.raises(ConfigError, match="previous_seal_key_env: needs seal_key_env"):
        config_mod.parse(raw, base_dir=tmp_path)


async def test_a_gateway_keeps_verifying_across_the_reseal(
    make_gateway: GatewayFactory, upstream: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NEW_ENV, b64(NEW))
    monkeypatch.setenv(OLD_ENV, b64(OLD))
    document = lifecycle("key-a")
    secret = document["keys"][0]["secret"]
    seal_to(tmp_path / "ring.json", document, OLD)  # where make_gateway keeps its keyring

    def sealed(raw: dict[str, Any]) -> None:
        raw["keyrings"]["ring"] |= {"seal_key_env": NEW_ENV, "previous_seal_key_env": OLD_ENV}

    gw = await make_gateway(keys={}, tweak=sealed)
    gw.keys.update({"key-a": secret})
    cache = gw.runtime.caches["ring"]
    version = cache.keyring.version_id if cache.keyring else None

    async def verified() -> int:
        status, _, _ = await post(
            gw.url("verify", "/cb"), data=b"{}", headers=lib_signed_headers(gw, "key-a", path="/cb", body=b"{}")
        )
        return status

    assert await verified() == 200
    settings = (
        config_mod.parse(
            {
                "keyrings": {
                    "ring": {
                        "path": str(tmp_path / "ring.json"),
                        "seal_key_env": NEW_ENV,
                        "previous_seal_key_env": OLD_ENV,
                    }
                },
                "listeners": {"v": {"port": 0}},
                "routes": [
                    {
                        "name": "in",
                        "listener": "v",
                        "mode": "verify",
                        "upstream": "http://127.0.0.1:9",
                        "keyring": "ring",
                    }
                ],
            },
            base_dir=tmp_path,
        )
        .keyrings["ring"]
        .settings
    )
    assert do_reseal(settings, dry_run=False)["action"] == "resealed"
    assert await cache.refresh() and cache.keyring is not None
    assert cache.keyring.version_id == version  # same keyring: nothing for the gateway to change
    assert await verified() == 200

    monkeypatch.delenv(OLD_ENV)  # the change is over: the old key is gone
    assert await cache.refresh() and cache.last_error is None
    assert await verified() == 200
    assert (
        parse_keyring("ring", sealing.unseal((tmp_path / "ring.json").read_bytes(), NEW, where="t")).signing_key_id
        == "key-a"
    )
    assert len(upstream.received) == 3
