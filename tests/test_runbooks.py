"""The rotation runbooks (runbooks/*.md) run as written: every ```sh block, in order, in one bash
with ``-euo pipefail``, against a temporary file keyring and a secret on moto's server, with only
the placeholders each runbook documents set in the environment. Short timings (1 s propagation
delay, 2 s overlap) stand in for production's; the commands are the same."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring, KeyState
from tests.helpers import random_secret
from tests.moto_faults import AWS_ENV, FaultyMotoServer

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "runbooks"
ROTATION_RUNBOOKS = ("scheduled-rotation", "emergency-rotation", "rollback", "migrating-from-the-manual-runbook")
KEYRING = "plugin-to-backend"
FAST = "propagation_delay_seconds = 1\nclock_skew_seconds = 0\nrotation_period_seconds = 0\n"


def sh_blocks(name: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", (RUNBOOKS / f"{name}.md").read_text(), re.M | re.S)


def placeholders(name: str) -> set[str]:
    """The variables a runbook documents: those named in its text before its first command."""
    text = (RUNBOOKS / f"{name}.md").read_text().split("```sh", 1)[0]
    return set(re.findall(r"`\$([A-Z_]+)`", text))


@pytest.mark.parametrize("name", ROTATION_RUNBOOKS)
def test_every_runbook_has_commands_and_uses_only_documented_placeholders(name: str) -> None:
    blocks = sh_blocks(name)
    assert blocks, name
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", "".join(blocks)))
    assert used <= placeholders(name), used - placeholders(name)
    assert "HMAC_GATEWAY_CONFIG" in placeholders(name)


def test_the_readme_links_every_rotation_runbook() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ROTATION_RUNBOOKS:
        assert f"(runbooks/{name}.md)" in readme


# -- running them --------------------------------------------------------------------------------


class Setup:
    """A config with one keyring (file or secret) and a way to read what is stored."""

    def __init__(self, tmp: Path, kind: str, moto: FaultyMotoServer, document: dict[str, Any], overlap: int) -> None:
        self.tmp = tmp
        timings = FAST + f"overlap_seconds = {overlap}\n"
        if kind == "file":
            path = tmp / "keyrings" / "ring.json"
            path.parent.mkdir()
            path.write_text(json.dumps(document))
            os.chmod(path, 0o600)
            keyring = f'path = "{path}"\n'
            self.read: Callable[[], Keyring] = lambda: parse_keyring(KEYRING, path.read_bytes())
        else:
            sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
            name = f"hmac-gateway/runbook/{uuid.uuid4().hex[:8]}"
            sm.create_secret(Name=name, SecretString=json.dumps(document))
            keyring = (
                f'source = "aws-secretsmanager"\nsecret_id = "{name}"\nregion = "us-east-1"\n'
                f'endpoint_url = "{moto.endpoint}"\n'
            )
            self.read = lambda: parse_keyring(
                KEYRING, sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"]
            )
        self.config = tmp / "gateway.toml"
        self.config.write_text(
            f'[keyrings.{KEYRING}]\n{keyring}{timings}[listeners.sign]\nport = 0\n[[routes]]\nname = "out"\n'
            f'listener = "sign"\nmode = "sign"\nupstream = "http://127.0.0.1:9"\nkeyring = "{KEYRING}"\n'
        )
        self.audit = tmp / "audit.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HMAC_GATEWAY"))}
        self.env = (
            env
            | AWS_ENV
            | {
                "AWS_ENDPOINT_URL_STS": moto.endpoint,
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                # the documented placeholders, and nothing else of the runbooks is changed
                "HMAC_GATEWAY_CONFIG": str(self.config),
                "HMAC_GATEWAY_AUDIT_LOG": str(self.audit),
                "KEYRING": KEYRING,
                "POLL_SECONDS": "0.3",
                "REASON": "test: key found in a build log",
            }
        )

    def rotate(self, *args: str) -> None:
        result = subprocess.run(
            ["hmac-gateway", "rotate", "--keyring", KEYRING, *args],
            env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    def run_runbook(self, name: str) -> subprocess.CompletedProcess[str]:
        script = "\n".join(sh_blocks(name))
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip

    def actions(self) -> list[str]:
        records = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [r["action"] for r in records if r["event"] == "action" and not r["dry_run"]]


def one_primary_lifecycle() -> dict[str, Any]:
    return {"hmac_gateway_keyring": 1, "keys": [{"id": "key-v1", "secret": random_secret(), "state": "primary"}]}


KINDS = ("file", "secretsmanager")


@pytest.mark.parametrize("kind", KINDS)
def test_scheduled_rotation_runs_as_written(tmp_path: Path, moto: FaultyMotoServer, kind: str) -> None:
    setup = Setup(tmp_path, kind, moto, one_primary_lifecycle(), overlap=2)
    result = setup.run_runbook("scheduled-rotation")
    assert result.returncode == 0, result.stderr
    ring = setup.read()
    assert [k.state for k in ring.keys] == [KeyState.PRIMARY] and ring.signing_key_id != "key-v1"
    assert setup.actions() == ["add", "demote", "promote", "remove"]


@pytest.mark.parametrize("kind", KINDS)
def test_emergency_rotation_runs_as_written(tmp_path: Path, moto: FaultyMotoServer, kind: str) -> None:
    setup = Setup(tmp_path, kind, moto, one_primary_lifecycle(), overlap=2)
    result = setup.run_runbook("emergency-rotation")
    assert result.returncode == 0, result.stderr
    ring = setup.read()
    assert [k.id for k in ring.keys] == [ring.signing_key_id] and ring.signing_key_id != "key-v1"
    assert "stops verifying now" in result.stdout
    assert '"reason":"test: key found in a build log"' in result.stdout  # the audit line the runbook greps


@pytest.mark.parametrize("kind", KINDS)
def test_rollback_runs_as_written(tmp_path: Path, moto: FaultyMotoServer, kind: str) -> None:
    setup = Setup(tmp_path, kind, moto, one_primary_lifecycle(), overlap=60)
    setup.rotate("add")
    pending = next(k for k in setup.read().keys if k.state is KeyState.PENDING)
    time.sleep(max(0.0, (pending.created_at or 0) + 1 - time.time() + 0.05))  # the 1 s propagation delay
    setup.rotate("promote")
    result = setup.run_runbook("rollback")
    assert result.returncode == 0, result.stderr
    ring = setup.read()
    assert ring.signing_key_id == "key-v1"
    assert ring.get(pending.id).state is KeyState.RETIRING  # type: ignore[union-attr]
    assert setup.actions()[-2:] == ["demote", "reinstate"]


@pytest.mark.parametrize("kind", KINDS)
def test_migrating_from_the_manual_runbook_runs_as_written(tmp_path: Path, moto: FaultyMotoServer, kind: str) -> None:
    flat = {"key-v1": random_secret(), "key-v2": random_secret()}
    setup = Setup(tmp_path, kind, moto, flat, overlap=2)
    result = setup.run_runbook("migrating-from-the-manual-runbook")
    assert result.returncode == 0, result.stderr
    assert "upgrade key-v1: flat -> lifecycle" in result.stdout
    ring = setup.read()
    assert ring.format == "lifecycle" and ring.signing_key_id == "key-v2"
    assert [k.state for k in ring.keys] == [KeyState.RETIRING, KeyState.PRIMARY, KeyState.PENDING]
    assert not any(secret in result.stdout + result.stderr for secret in flat.values())
