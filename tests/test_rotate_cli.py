"""``hmac-gateway rotate`` as an operator runs it (gateway/cli/rotate.py): the real entry point in
subprocesses, keyring files on disk and moto's Secrets Manager over HTTP. Exact output lines and
exit codes; no secret in any output; 8 processes rotating one keyring at once; a rotator killed
between its write and the label move."""

from __future__ import annotations

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
from gateway.clock import from_rfc3339, to_rfc3339
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring, KeyState
from tests.helpers import random_secret
from tests.moto_faults import AWS_ENV, Fault, FaultyMotoServer
from tests.support import free_port

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
KID = r"key-\d{8}T\d{6}Z-[0-9a-f]{4}"
HOUR = 3600


def rotate_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HMAC_GATEWAY"))}
    return env | AWS_ENV | (extra or {})


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env or rotate_env(),
        input=stdin,
        check=False,
    )


def config(tmp: Path, keyring: str) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(
        f"""[keyrings.demo]
{keyring}
[listeners.sign]
port = 0
[[routes]]
name = "out"
listener = "sign"
mode = "sign"
upstream = "http://127.0.0.1:9"
keyring = "demo"
"""
    )
    return path


FILE_RING = 'path = "keyrings/demo.json"\naudit_log = "audit.jsonl"\npropagation_delay_seconds = 600\n'


def write_ring(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    return document


def lifecycle(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"hmac_gateway_keyring": 1, "keys": list(keys)}


def key(kid: str, state: str, **stamps: float) -> dict[str, Any]:
    return {"id": kid, "secret": random_secret(), "state": state, **{k: to_rfc3339(v) for k, v in stamps.items()}}


def read_ring(path: Path) -> Keyring:
    return parse_keyring("demo", path.read_bytes())


def secrets_of(document: dict[str, Any]) -> list[str]:
    return [k["secret"] for k in document["keys"]]


def matches(lines: list[str], patterns: list[str]) -> None:
    assert len(lines) == len(patterns), "\n".join(lines)
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), f"{line!r} !~ {pattern!r}"


def audit_records(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp / "audit.jsonl").read_text().splitlines()]


@pytest.fixture
def ring(tmp_path: Path) -> tuple[Path, Path, dict[str, Any], float]:
    now = float(int(time.time()))
    doc = write_ring(
        tmp_path / "keyrings" / "demo.json",
        lifecycle(
            key("key-old", "primary", created_at=now - 40 * 24 * HOUR, promoted_at=now - 31 * 24 * HOUR),
            key("key-new", "pending", created_at=now - HOUR),
        ),
    )
    return config(tmp_path, FILE_RING), tmp_path / "keyrings" / "demo.json", doc, now


def test_dry_run_shows_the_exact_before_and_after_and_writes_nothing(tmp_path: Path, ring: Any) -> None:
    cfg, path, doc, _ = ring
    before = path.read_bytes()
    result = cli("--config", str(cfg), "rotate", "--keyring", "demo", "promote", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    old, new = doc["keys"]
    matches(
        result.stdout.splitlines(),
        [
            rf"keyring 'demo': promote at {TS} \(dry run, nothing written\)",
            rf"  demote key-old: primary -> retiring \(verifies until {TS}\)",
            r"  promote key-new: pending -> primary",
            r"  before \(lifecycle\):",
            rf"    key-old  primary  created_at={old['created_at']} promoted_at={old['promoted_at']}",
            rf"    key-new  pending  created_at={new['created_at']}",
            r"  after \(lifecycle\):",
            rf"    key-old  retiring  created_at={old['created_at']} promoted_at={old['promoted_at']} expires_at={TS}",
            rf"    key-new  primary  created_at={new['created_at']} promoted_at={TS}",
            rf"  next step possible at {TS}",
        ],
    )
    assert path.read_bytes() == before
    records = audit_records(tmp_path)
    assert [(r["action"], r["dry_run"]) for r in records] == [("demote", True), ("promote", True)]
    assert [json.loads(line) for line in result.stderr.splitlines()] == records  # echoed on stderr
    assert not any(s in result.stdout + result.stderr for s in secrets_of(doc))


def test_promote_writes_and_says_when_the_next_step_is_possible(tmp_path: Path, ring: Any) -> None:
    cfg, path, _, _ = ring
    result = cli("--config", str(cfg), "rotate", "--keyring", "demo", "promote", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = read_ring(path)
    expires = after.get("key-old").expires_at  # type: ignore[union-attr]
    assert expires is not None
    matches(
        result.stdout.splitlines(),
        [
            rf"keyring 'demo': promote at {TS} \(written\)",
            rf"  demote key-old: primary -> retiring \(verifies until {to_rfc3339(expires)}\)",
            r"  promote key-new: pending -> primary",
            rf"  next step possible at {to_rfc3339(expires)}",
        ],
    )
    assert after.signing_key_id == "key-new"
    again = cli("--config", str(cfg), "rotate", "--keyring", "demo", cwd=tmp_path)  # advance: nothing yet
    assert again.returncode == 0
    matches(
        again.stdout.splitlines(),
        [
            rf"keyring 'demo': advance at {TS} \(no change\)",
            rf"  note: primary key key-new is due for rotation at {TS}",
            rf"  next step possible at {to_rfc3339(expires)}",
        ],
    )


REFUSALS = {
    "retire during the overlap": (
        lifecycle(key("key-a", "retiring", expires_at=2e9), key("key-b", "primary")),
        ["retire"],
        exitcodes.NOT_YET,
        rf"hmac-gateway: refused \(overlap_active\): key key-a verifies until {to_rfc3339(2e9)}; "
        r"it cannot be removed earlier",
    ),
    "promote too early": (
        lifecycle(key("key-a", "primary"), key("key-b", "pending", created_at=time.time() - 60)),
        ["promote"],
        exitcodes.NOT_YET,
        rf"hmac-gateway: refused \(too_early\): key key-b has not been pending for the propagation delay "
        rf"\(600 s\); promote at {TS} or later",
    ),
    "add while a key is pending": (
        lifecycle(key("key-a", "primary"), key("key-b", "pending", created_at=time.time() - 60)),
        ["add"],
        exitcodes.NOT_YET,
        rf"hmac-gateway: refused \(pending_exists\): key key-b is already pending; promote it "
        rf"\(possible at {TS}\) before adding another",
    ),
    "promote with nothing pending": (
        lifecycle(key("key-a", "primary")),
        ["promote"],
        exitcodes.REFUSED,
        r"hmac-gateway: refused \(nothing_pending\): keyring 'demo' has no pending key",
    ),
    "emergency without a reason": (
        lifecycle(key("key-a", "primary")),
        ["--emergency"],
        exitcodes.REFUSED,
        r"hmac-gateway: refused \(reason_required\): an emergency rotation needs a reason \(it goes to the audit\)",
    ),
}


@pytest.mark.parametrize(("document", "args", "code", "line"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_have_documented_exit_codes_one_line_and_an_audit_record(
    tmp_path: Path, document: dict[str, Any], args: list[str], code: int, line: str
) -> None:
    path = tmp_path / "keyrings" / "demo.json"
    write_ring(path, document)
    before = path.read_bytes()
    cfg = config(tmp_path, FILE_RING)
    result = cli("--config", str(cfg), "rotate", "--keyring", "demo", *args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    audit, message = result.stderr.splitlines()
    assert re.fullmatch(line, message), message
    assert json.loads(audit)["event"] == "refusal"
    assert path.read_bytes() == before


USAGE = {
    "grace without emergency": (["--grace", "5"], "--grace applies to --emergency only"),
    "emergency with a step": (["add", "--emergency", "--reason", "x"], "--emergency is a step of its own"),
    "secret for promote": (["promote", "--secret-stdin"], "--secret-stdin applies to add"),
    "unknown keyring": (["--keyring", "nope"], "--keyring: 'nope' is not a configured keyring (demo)"),
}


@pytest.mark.parametrize(("args", "problem"), USAGE.values(), ids=USAGE.keys())
def test_usage_errors_exit_2_before_touching_anything(tmp_path: Path, ring: Any, args: list[str], problem: str) -> None:
    cfg, path, _, _ = ring
    before = path.read_bytes()
    which = [] if "--keyring" in args else ["--keyring", "demo"]
    result = cli("--config", str(cfg), "rotate", *which, *args, cwd=tmp_path)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert result.stderr.startswith("hmac-gateway: config error: ") and problem in result.stderr
    assert path.read_bytes() == before and not (tmp_path / "audit.jsonl").exists()


def test_add_imports_a_partners_secret_from_stdin_and_never_shows_it(tmp_path: Path) -> None:
    path = tmp_path / "keyrings" / "demo.json"
    doc = write_ring(path, lifecycle(key("key-a", "primary")))
    cfg = config(tmp_path, FILE_RING)
    partner = "whpartner-" + random_secret()
    args = ("--config", str(cfg), "rotate", "--keyring", "demo", "add", "--secret-stdin", "--key-id", "partner-1")
    result = cli(*args, cwd=tmp_path, stdin=partner + "\n")
    assert result.returncode == 0, result.stderr
    imported = read_ring(path).get("partner-1")
    assert imported is not None and imported.state is KeyState.PENDING
    assert imported.material == partner.encode()
    shown = result.stdout + result.stderr + (tmp_path / "audit.jsonl").read_text()
    assert partner not in shown and not any(s in shown for s in secrets_of(doc))
    empty = cli(*args, cwd=tmp_path, stdin="")
    assert empty.returncode == exitcodes.CONFIG_ERROR and "standard input held no secret" in empty.stderr


def test_json_output_has_a_schema_and_the_plan(tmp_path: Path, ring: Any) -> None:
    cfg, _, _, _ = ring
    result = cli("--config", str(cfg), "rotate", "--all", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1
    plan = doc["keyrings"]["demo"]
    assert (plan["step"], plan["written"], plan["dry_run"]) == ("advance", True, False)
    assert [a["kind"] for a in plan["actions"]] == ["demote", "promote"]
    assert [k["id"] for k in plan["after"] if k["state"] == "primary"] == ["key-new"]


def test_emergency_says_who_fails_until_they_reload(tmp_path: Path, ring: Any) -> None:
    cfg, path, doc, _ = ring
    result = cli("--config", str(cfg), "rotate", "--keyring", "demo", "--emergency", "--reason", "leaked", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = read_ring(path)
    new = after.signing_key_id
    assert set(k.id for k in after.keys) == {new}  # key-old gone at once, the pending key-new discarded
    out = result.stdout.splitlines()
    assert "  key key-old stops verifying now: every request still signed with it fails from then on." in out
    assert any(line.startswith(f"  Gateways signing through this keyring switch to {new}") for line in out)
    events = [r["event"] for r in audit_records(tmp_path)]
    assert events.count("emergency") == 1
    assert not any(s in result.stdout + result.stderr for s in secrets_of(doc))


def test_status_writes_nothing_and_audits_nothing(tmp_path: Path, ring: Any) -> None:
    cfg, path, _, _ = ring
    before = path.read_bytes()
    result = cli("--config", str(cfg), "rotate", "--keyring", "demo", "status", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "  rotate would promote key-new now"
    assert path.read_bytes() == before and not (tmp_path / "audit.jsonl").exists()


def test_an_unreachable_secrets_manager_exits_9(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    cfg = config(
        tmp_path,
        f'source = "aws-secretsmanager"\nsecret_id = "s"\nregion = "us-east-1"\nendpoint_url = "{endpoint}"\n'
        "max_attempts = 1\n",
    )
    result = cli("--config", str(cfg), "rotate", "--keyring", "demo", cwd=tmp_path)
    assert result.returncode == exitcodes.SOURCE_UNAVAILABLE
    assert result.stderr.splitlines() == [
        "hmac-gateway: keyring 'demo': aws-secretsmanager:s: cannot connect to the Secrets Manager endpoint"
    ]


def test_a_shorter_overlap_needs_the_override_and_the_audit_records_it(tmp_path: Path, ring: Any) -> None:
    cfg, path, _, _ = ring
    result = cli(
        "--config", str(cfg), "rotate", "--keyring", "demo", "promote", "--override-overlap", "3600", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    old = read_ring(path).get("key-old")
    assert old is not None and old.expires_at is not None
    demote = next(r for r in audit_records(tmp_path) if r["action"] == "demote")
    assert demote["overrides"] == ["short_overlap"]
    assert old.expires_at - from_rfc3339(demote["time"]) == pytest.approx(3600, abs=2)
    too_short = cli(
        "--config", str(cfg), "rotate", "--keyring", "demo", "rollback", "--override-overlap", "60", cwd=tmp_path
    )
    assert too_short.returncode == exitcodes.REFUSED and "(overlap_too_short)" in too_short.stderr


def test_all_tries_every_keyring_and_exits_with_the_first_failure(tmp_path: Path) -> None:
    write_ring(tmp_path / "keyrings" / "a.json", lifecycle(key("key-a", "primary")))
    write_ring(tmp_path / "keyrings" / "b.json", lifecycle(key("key-b", "primary")))
    cfg = config(tmp_path, 'path = "keyrings/missing.json"\n[keyrings.a]\npath = "keyrings/a.json"\n')
    result = cli("--config", str(cfg), "rotate", "--all", "add", cwd=tmp_path)
    assert result.returncode == exitcodes.SOURCE_UNAVAILABLE
    assert "keyring 'demo': file:" in result.stderr and "keyring file does not exist" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "hmac-gateway: rotate: at least one keyring failed (see above); the others were rotated"
    )
    assert [k.state for k in read_ring(tmp_path / "keyrings" / "a.json").keys] == [KeyState.PRIMARY, KeyState.PENDING]


# -- eight rotators at once ----------------------------------------------------------------------


FAST = "propagation_delay_seconds = 1\noverlap_seconds = 2\nclock_skew_seconds = 0\nrotation_period_seconds = 0\n"


def rotators(cfg: Path, cwd: Path, env: dict[str, str], step: str, n: int = 8) -> list[int]:
    """``n`` rotate processes started together; their exit codes."""
    args = [sys.executable, "-m", "gateway", "--config", str(cfg), "rotate", "--keyring", "demo", step]
    procs = [
        subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)
    ]
    try:
        return sorted(p.wait(90) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # only our own children, by pid
                p.wait(10)


def wait_until(when: float) -> None:
    # Real seconds on purpose: eight real processes read the real clock. Bounded: at most ~2 s.
    time.sleep(max(0.0, when - time.time() + 0.05))


def walk_with_eight_rotators(cfg: Path, cwd: Path, env: dict[str, str], read: Any) -> None:
    assert rotators(cfg, cwd, env, "add") == [0] + [exitcodes.NOT_YET] * 7  # pending_exists for the losers
    ring = read()
    pending = [k for k in ring.keys if k.state is KeyState.PENDING]
    assert len(pending) == 1 and {k.id for k in ring.keys} == {"key-v1", pending[0].id}
    wait_until(pending[0].created_at + 1)

    assert rotators(cfg, cwd, env, "promote") == [0] + [exitcodes.REFUSED] * 7  # nothing_pending
    ring = read()
    assert ring.signing_key_id == pending[0].id and {k.id for k in ring.keys} == {"key-v1", pending[0].id}
    old = ring.get("key-v1")
    assert old is not None and old.state is KeyState.RETIRING and old.expires_at is not None
    wait_until(old.expires_at)

    assert rotators(cfg, cwd, env, "retire") == [0] + [exitcodes.REFUSED] * 7  # nothing_to_retire
    assert [(k.id, k.state) for k in read().keys] == [(pending[0].id, KeyState.PRIMARY)]


def test_eight_rotators_on_one_file_add_promote_and_retire_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "keyrings" / "demo.json"
    write_ring(path, lifecycle(key("key-v1", "primary", created_at=time.time() - HOUR)))
    cfg = config(tmp_path, 'path = "keyrings/demo.json"\naudit_log = "audit.jsonl"\n' + FAST)
    walk_with_eight_rotators(cfg, tmp_path, rotate_env(), lambda: read_ring(path))
    written = [r for r in audit_records(tmp_path) if r["event"] == "action"]
    assert [r["action"] for r in written] == ["add", "demote", "promote", "remove"]


def test_eight_rotators_on_one_secret_add_promote_and_retire_exactly_once(
    tmp_path: Path, moto: FaultyMotoServer
) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
    name = f"hmac-gateway/rotate/{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps(lifecycle(key("key-v1", "primary"))))
    cfg = config(
        tmp_path,
        f'source = "aws-secretsmanager"\nsecret_id = "{name}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{moto.endpoint}"\naudit_log = "audit.jsonl"\n' + FAST,
    )
    env = rotate_env({"AWS_ENDPOINT_URL_STS": moto.endpoint})

    def read() -> Keyring:
        return parse_keyring("demo", sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"])

    walk_with_eight_rotators(cfg, tmp_path, env, read)
    records = audit_records(tmp_path)
    assert [r["action"] for r in records if r["event"] == "action"] == ["add", "demote", "promote", "remove"]
    assert {r["actor"] for r in records} == {"arn:aws:sts::123456789012:user/moto"}
    versions = sm.list_secret_version_ids(SecretId=name)["Versions"]
    assert sum("AWSCURRENT" in v["VersionStages"] for v in versions) == 1


def test_a_rotator_killed_between_its_write_and_the_label_move_leaves_a_readable_keyring(
    tmp_path: Path, moto: FaultyMotoServer
) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
    name = f"hmac-gateway/rotate/{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps(lifecycle(key("key-v1", "primary"))))
    current = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["VersionId"]
    cfg = config(
        tmp_path,
        f'source = "aws-secretsmanager"\nsecret_id = "{name}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{moto.endpoint}"\nread_timeout_seconds = 30\n' + FAST,
    )
    env = rotate_env({"AWS_ENDPOINT_URL_STS": moto.endpoint})
    moto.injector.clear()
    moto.injector.inject(Fault("hang", "UpdateSecretVersionStage", seconds=20, times=1))
    moves = moto.injector.calls["UpdateSecretVersionStage"]
    args = [sys.executable, "-m", "gateway", "--config", str(cfg), "rotate", "--keyring", "demo", "add"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while moto.injector.calls["UpdateSecretVersionStage"] == moves:  # the new version is stored, not yet current
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.kill()  # our own child, by pid: it dies between PutSecretValue and the stage move
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    moto.injector.clear()
    # Every gateway still reads the old, valid keyring.
    value = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
    assert value["VersionId"] == current
    assert [k.id for k in parse_keyring("demo", value["SecretString"]).keys] == ["key-v1"]
    versions = sm.list_secret_version_ids(SecretId=name)["Versions"]
    assert any(s.startswith("hmac-gateway-write-") for v in versions for s in v["VersionStages"])  # the orphan
    # The next run finishes: exactly one new key, one primary, one AWSCURRENT.
    again = cli("--config", str(cfg), "rotate", "--keyring", "demo", "add", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    ring = parse_keyring("demo", sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"])
    assert [k.state for k in ring.keys] == [KeyState.PRIMARY, KeyState.PENDING]
    versions = sm.list_secret_version_ids(SecretId=name)["Versions"]
    assert sum("AWSCURRENT" in v["VersionStages"] for v in versions) == 1
