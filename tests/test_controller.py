"""The rotation controller (gateway/rotation/controller.py, audit.py) against real sources: keyring
files on disk and moto's Secrets Manager server over HTTP behind the fault injector. The clock is
a FakeClock; nothing sleeps through a window. Every test checks the keyring left behind parses,
has exactly one primary, and lost no key before its expiry."""

from __future__ import annotations

import getpass
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from gateway import config as config_mod
from gateway.errors import ConfigError, RotationConflict, SourceUnavailable
from gateway.keys.aws import SecretsManagerSource
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring, KeyState
from gateway.keys.settings import (
    ROTATION_DEFAULTS,
    FileSourceSettings,
    KeyringSettings,
    RefreshPolicy,
    RotationSettings,
    SecretsManagerSettings,
)
from gateway.keys.sources import Document, FileSource
from gateway.rotation import Refusal, Request, RotationRefused, Step
from gateway.rotation.audit import AuditLog, Auditor, MemoryAudit, actor_for
from gateway.rotation.controller import Controller
from gateway.rotation.settings import policy_for
from tests.helpers import FakeClock, random_secret
from tests.moto_faults import AWS_ENV, Fault, FaultyMotoServer
from tests.support import free_port

T0 = 1_800_000_000.0
DELAY, OVERLAP = 120.0, 3600.0
ROTATION = RotationSettings(propagation_delay=DELAY, overlap=OVERLAP, rotation_period=86400.0, clock_skew=60.0)


def settings_for(path: Path) -> KeyringSettings:
    return KeyringSettings("ring", FileSourceSettings(path=path), rotation=ROTATION)


def write_ring(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)


def make(source: Any, settings: KeyringSettings, clock: FakeClock, **kw: Any) -> tuple[Controller, MemoryAudit]:
    audit = MemoryAudit()
    auditor = Auditor(audit, settings.name, source.description, lambda: "tester")
    return Controller(settings, source, auditor, clock=clock, sleep=lambda _: None, **kw), audit


def stored(source: Any) -> Keyring:
    document = source.load()
    return parse_keyring("ring", document.data, version_id=document.version_id)


def states(keyring: Keyring) -> dict[str, str]:
    return {k.id: k.state.value for k in keyring.keys}


def one_primary(keyring: Keyring) -> str:
    primaries = [k.id for k in keyring.keys if k.state is KeyState.PRIMARY]
    assert len(primaries) == 1, primaries
    return primaries[0]


@pytest.fixture
def file_ring(tmp_path: Path) -> tuple[FileSource, KeyringSettings, dict[str, str]]:
    path = tmp_path / "ring.json"
    secrets = {"key-v1": random_secret(), "key-v2": random_secret()}
    write_ring(path, secrets)
    return FileSource("ring", path), settings_for(path), secrets


def test_the_whole_lifecycle_on_a_file_with_a_fake_clock(file_ring: Any) -> None:
    source, settings, secrets = file_ring
    clock = FakeClock(T0)
    controller, audit = make(source, settings, clock)

    first = controller.run(Request())
    assert first.written and [a.kind.value for a in first.plan.actions] == ["upgrade", "add"]
    ring = stored(source)
    new = next(k.id for k in ring.keys if k.state is KeyState.PENDING)
    assert states(ring) == {"key-v1": "retiring", "key-v2": "primary", new: "pending"}
    assert first.plan.next_step_at == ring.get(new).created_at + DELAY  # type: ignore[union-attr]

    again = controller.run(Request())  # at once: nothing to do, nothing written
    assert not again.written and not again.plan.changed
    assert stored(source).version_id == ring.version_id

    with pytest.raises(RotationRefused) as early:
        controller.run(Request(Step.PROMOTE))
    assert early.value.code is Refusal.TOO_EARLY and 0 < (early.value.seconds_remaining or 0) <= DELAY

    clock.advance(DELAY + 1)
    promoted = controller.run(Request())
    assert [a.kind.value for a in promoted.plan.actions] == ["demote", "promote"]
    ring = stored(source)
    assert one_primary(ring) == new and ring.get("key-v2").expires_at == pytest.approx(clock.now + OVERLAP, abs=1)  # type: ignore[union-attr]

    with pytest.raises(RotationRefused) as active:
        controller.run(Request(Step.RETIRE))
    assert active.value.code is Refusal.OVERLAP_ACTIVE

    clock.advance(OVERLAP + 1)
    retired = controller.run(Request())
    assert {a.kind.value for a in retired.plan.actions} == {"remove"}
    assert states(stored(source)) == {new: "primary"}

    events = [(r["event"], r.get("action") or r.get("code")) for r in audit.records]
    assert events == [
        ("action", "upgrade"),
        ("action", "add"),
        ("refusal", "too_early"),
        ("action", "demote"),
        ("action", "promote"),
        ("refusal", "overlap_active"),
        ("action", "remove"),
        ("action", "remove"),
    ]
    assert all(r["actor"] == "tester" and r["keyring"] == "ring" and r["dry_run"] is False for r in audit.records)
    text = json.dumps(audit.records)
    assert not any(secret in text for secret in secrets.values())
    assert ring.get(new).secret not in text  # type: ignore[union-attr]


def test_a_dry_run_writes_nothing_and_says_so_in_the_audit(file_ring: Any) -> None:
    source, settings, _ = file_ring
    before = source.path.read_bytes()
    controller, audit = make(source, settings, FakeClock(T0))
    outcome = controller.run(Request(Step.ADD), dry_run=True)
    assert outcome.dry_run and not outcome.written and outcome.plan.changed
    assert source.path.read_bytes() == before
    assert [r["dry_run"] for r in audit.records] == [True, True]


def test_the_audit_file_gets_one_line_per_record_mode_0600_and_no_secret(file_ring: Any, tmp_path: Path) -> None:
    source, settings, secrets = file_ring
    log = tmp_path / "audit" / "rotate.jsonl"
    auditor = Auditor(AuditLog(log, stream=None), "ring", source.description, lambda: "ops")
    Controller(settings, source, auditor, clock=FakeClock(T0)).run(Request(Step.ADD, reason="quarterly"))
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["action"] for r in records] == ["upgrade", "add"]
    assert records[1]["reason"] == "quarterly" and records[1]["to_state"] == "pending"
    assert set(records[1]) >= {"time", "actor", "keyring", "action", "key_ids", "from_state", "to_state", "dry_run"}
    assert os.stat(log).st_mode & 0o777 == 0o600
    assert not any(s in log.read_text() for s in [*secrets.values(), *(k.secret for k in stored(source).keys)])


class RacingFileSource(FileSource):
    """A real file source; before its first write another controller rotates the same file."""

    def __init__(self, path: Path, rival: Controller) -> None:
        super().__init__("ring", path)
        self.rival: Controller | None = rival

    def write(self, document: bytes, *, expected_version: str) -> Document:
        rival, self.rival = self.rival, None
        if rival is not None:
            assert rival.run(Request()).written
        return super().write(document, expected_version=expected_version)


def test_a_writer_that_loses_re_reads_and_re_plans_instead_of_adding_a_second_key(file_ring: Any) -> None:
    source, settings, _ = file_ring
    clock = FakeClock(T0)
    rival, _ = make(FileSource("ring", source.path), settings, clock)
    controller, _ = make(RacingFileSource(source.path, rival), settings, clock)
    outcome = controller.run(Request())
    assert outcome.attempts == 2 and not outcome.written  # the rival's key is pending: nothing left to do
    ring = stored(source)
    assert [k.state for k in ring.keys].count(KeyState.PENDING) == 1
    assert {"key-v1", "key-v2"} <= set(states(ring))


class AlwaysLosing(FileSource):
    """Every write finds the file changed by someone else (a real rewrite before each write)."""

    def write(self, document: bytes, *, expected_version: str) -> Document:
        data = json.loads(self.path.read_text())
        data["key-noise-" + uuid.uuid4().hex[:6]] = random_secret()
        write_ring(self.path, data)
        return super().write(document, expected_version=expected_version)


def test_conflicts_on_every_attempt_end_in_a_clear_error_after_the_bound(file_ring: Any) -> None:
    source, settings, _ = file_ring
    controller, audit = make(AlwaysLosing("ring", source.path), settings, FakeClock(T0), attempts=3)
    with pytest.raises(RotationConflict, match=r"not written after 3 attempts: other writers kept changing it first"):
        controller.run(Request(Step.ADD))
    assert audit.records[-1]["event"] == "error" and audit.records[-1]["attempts"] == 3
    ring = stored(source)  # only the rival's noise landed; the file is a valid flat map
    assert ring.format == "flat" and {"key-v1", "key-v2"} <= set(states(ring))


def test_emergency_is_audited_with_its_reason_and_expires_the_compromised_key(file_ring: Any) -> None:
    source, settings, _ = file_ring
    clock = FakeClock(T0)
    controller, audit = make(source, settings, clock)
    controller.run(Request(Step.ADD))
    outcome = controller.run(Request(Step.EMERGENCY, reason="key-v2 leaked in a log"))
    ring = stored(source)
    assert "key-v2" not in states(ring) and states(ring)["key-v1"] == "retiring"
    new = one_primary(ring)
    emergency = [r for r in audit.records if r["event"] == "emergency"]
    assert len(emergency) == 1 and emergency[0]["reason"] == "key-v2 leaked in a log"
    assert emergency[0]["new_primary"] == new
    assert {"key_id": "key-v2", "at": emergency[0]["time"]} in emergency[0]["stops_verifying"]
    assert outcome.written


def test_policy_follows_the_settings_and_derives_the_propagation_delay(tmp_path: Path) -> None:
    derived = KeyringSettings(
        "r", FileSourceSettings(tmp_path / "r.json"), refresh=RefreshPolicy(interval=10, jitter=0)
    )
    assert policy_for(derived).propagation_delay == 80.0  # 2 x 10 s + 60 s margin
    assert policy_for(settings_for(tmp_path / "r.json")).overlap == OVERLAP


def test_the_actor_is_the_os_user_for_a_file_keyring(tmp_path: Path) -> None:
    assert actor_for(settings_for(tmp_path / "r.json")) == getpass.getuser()


# -- Secrets Manager on moto's server, behind the fault injector ---------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[FaultyMotoServer]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        server = FaultyMotoServer()
        server.start()
        mp.setenv("AWS_ENDPOINT_URL_STS", server.endpoint)
        yield server
        server.stop()


@pytest.fixture
def sm_ring(moto: FaultyMotoServer) -> Iterator[tuple[SecretsManagerSource, KeyringSettings, str]]:
    moto.injector.clear()
    client = boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name="us-east-1")
    name = f"hmac-gateway/rotate/{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=json.dumps({"key-v1": random_secret(), "key-v2": random_secret()}))
    sm = SecretsManagerSettings(secret_id=name, region="us-east-1", endpoint_url=moto.endpoint, max_attempts=3)
    settings = KeyringSettings("ring", sm, rotation=ROTATION)
    source = SecretsManagerSource(
        "ring", name, region="us-east-1", endpoint_url=moto.endpoint, max_attempts=3, read_timeout=2.0
    )
    yield source, settings, name
    moto.injector.clear()


def test_the_actor_of_a_secrets_manager_keyring_is_the_aws_caller_identity(sm_ring: Any) -> None:
    _, settings, _ = sm_ring
    assert actor_for(settings).startswith("arn:aws:")


FAULTS = {
    "throttled put": [Fault("throttle", "PutSecretValue", times=2)],
    "5xx on the stage move": [Fault("error500", "UpdateSecretVersionStage", times=2)],
    "lost answer of the stage move": [Fault("lost_answer", "UpdateSecretVersionStage", times=1)],
    "lost answer of the put": [Fault("lost_answer", "PutSecretValue", times=1)],
    "throttled reads": [Fault("throttle", "GetSecretValue", times=2)],
    "unavailable, then lost": [
        Fault("unavailable", "UpdateSecretVersionStage", times=1),
        Fault("lost_answer", "UpdateSecretVersionStage", times=1),
    ],
}


@pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
def test_faults_during_a_rotation_lose_no_key_and_never_leave_two_primaries(
    moto: FaultyMotoServer, sm_ring: Any, faults: list[Fault]
) -> None:
    source, settings, _ = sm_ring
    clock = FakeClock(T0)
    controller, _ = make(source, settings, clock)
    controller.run(Request(Step.ADD))
    before = stored(source)
    pending = next(k.id for k in before.keys if k.state is KeyState.PENDING)
    clock.advance(DELAY + 1)
    for fault in faults:
        moto.injector.inject(fault)
    outcome = controller.run(Request(Step.PROMOTE))
    moto.injector.clear()
    assert outcome.written
    after = stored(source)
    assert one_primary(after) == pending
    assert set(states(after)) == set(states(before))  # every key still there
    assert states(after)["key-v2"] == "retiring"


def test_a_source_that_keeps_failing_leaves_the_keyring_as_it_was_and_says_so(
    moto: FaultyMotoServer, sm_ring: Any
) -> None:
    source, settings, _ = sm_ring
    before = source.load()
    moto.injector.inject(Fault("error500", "UpdateSecretVersionStage"))  # until cleared
    controller, audit = make(source, settings, FakeClock(T0), attempts=2)
    with pytest.raises(SourceUnavailable, match=r"add not written after 2 attempts: .*InternalServiceError"):
        controller.run(Request(Step.ADD))
    moto.injector.clear()
    assert source.load().version_id == before.version_id  # AWSCURRENT never moved
    assert audit.records[-1]["event"] == "error"
    assert controller.run(Request(Step.ADD)).written  # and the next run finishes


def test_an_unreachable_source_is_source_unavailable(moto: FaultyMotoServer) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    sm = SecretsManagerSettings(secret_id="nope", region="us-east-1", endpoint_url=endpoint, max_attempts=1)
    settings = KeyringSettings("ring", sm, rotation=ROTATION)
    source = SecretsManagerSource("ring", "nope", region="us-east-1", endpoint_url=endpoint, max_attempts=1)
    controller, _ = make(source, settings, FakeClock(T0))
    with pytest.raises(SourceUnavailable, match="cannot connect to the Secrets Manager endpoint"):
        controller.run(Request())


# -- rotation settings: config keys, validation, README ------------------------------------------


def _raw(**ring: Any) -> dict[str, Any]:
    return {
        "keyrings": {"r": {"path": "r.json", **ring}},
        "listeners": {"sign": {"port": 0}},
        "routes": [{"listener": "sign", "mode": "sign", "upstream": "http://127.0.0.1:9", "keyring": "r"}],
    }


def test_rotation_settings_come_from_the_keyring_table(tmp_path: Path) -> None:
    raw = _raw(
        propagation_delay_seconds=900,
        overlap_seconds=7200,
        rotation_period_seconds=0,
        emergency_grace_seconds=30,
        clock_skew_seconds=5,
        audit_log="logs/rotate.jsonl",
    )
    cfg = config_mod.parse(raw, base_dir=tmp_path)
    rotation = cfg.keyrings["r"].settings.rotation
    assert rotation == RotationSettings(900.0, 7200.0, 0.0, 30.0, 5.0, tmp_path / "logs" / "rotate.jsonl")
    policy = policy_for(cfg.keyrings["r"].settings)
    assert (policy.propagation_delay, policy.overlap, policy.rotation_period) == (900.0, 7200.0, None)
    assert json.dumps(cfg.to_public_dict(), default=str)  # check-config --json can show it
    assert config_mod.parse(_raw(), base_dir=tmp_path).keyrings["r"].settings.rotation == ROTATION_DEFAULTS


def test_a_rotation_policy_that_would_break_senders_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.parse(_raw(overlap_seconds=60, propagation_delay_seconds=0), base_dir=tmp_path)
    assert any(p.startswith("[keyrings.r].propagation_delay: must be positive") for p in info.value.problems)
    with pytest.raises(ConfigError) as info:
        config_mod.parse(_raw(overlap_seconds=60), base_dir=tmp_path)
    assert any(p.startswith("[keyrings.r].overlap: 60 s is shorter than") for p in info.value.problems)


def test_the_readme_documents_the_rotation_defaults_the_settings_declare() -> None:
    section = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## Key rotation", 1)[1]
    rows = dict(re.findall(r"^\| `(\w+)` \| `?([^`|]+)`? ", section.split("\n## ", 1)[0], re.M))
    assert float(rows["overlap_seconds"]) == ROTATION_DEFAULTS.overlap
    assert float(rows["rotation_period_seconds"]) == ROTATION_DEFAULTS.rotation_period
    assert float(rows["emergency_grace_seconds"]) == ROTATION_DEFAULTS.emergency_grace
    assert float(rows["clock_skew_seconds"]) == ROTATION_DEFAULTS.clock_skew
    derived = policy_for(KeyringSettings("x", FileSourceSettings(Path("x")))).propagation_delay
    assert re.search(rf"^\| `propagation_delay_seconds` \| derived: .*\({derived:g} s by default\)", section, re.M)
