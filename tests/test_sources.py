"""File keyring source, its compare-and-swap writes, and sealing at rest (gateway/keys/sources.py,
gateway/keys/sealing.py, gateway/keys/factory.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod
from gateway.errors import SealError, SourceError, WriteConflict
from gateway.keys import sealing
from gateway.keys.factory import make_source, provision, read_keyring
from gateway.keys.formats import parse_keyring
from gateway.keys.model import KeyState
from gateway.keys.settings import (
    DEFAULT_ENCODING,
    FILE_DEFAULTS,
    REFRESH_DEFAULTS,
    SECRETS_MANAGER_DEFAULTS,
    FileSourceSettings,
    KeyringSettings,
    RefreshPolicy,
    SecretsManagerSettings,
)
from gateway.keys.sources import MISSING_VERSION, Document, FileSource
from tests.cas_workers import file_worker, run_workers

# -- helpers -------------------------------------------------------------------------------

MASTER_ENV = "TEST_HMAC_GATEWAY_MASTER_KEY"
MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(100, 132))
SECRET = "file-source-secret-0123456789-abcdefghij"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class CountingClock:
    """An injected clock that counts calls: FileSource reads it once per keyring it creates."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.calls += 1
        return self.now


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def flat_document(secret: str = SECRET) -> bytes:
    return json.dumps({"key-v1": secret}).encode()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def master_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(MASTER_ENV, b64(MASTER))
    return MASTER_ENV


def sealed_file(path: Path, plaintext: bytes = b"", master: bytes = MASTER) -> Path:
    return write(path, sealing.seal(plaintext or flat_document(), master))


def seal_error(path: Path) -> SealError:
    with pytest.raises(SealError) as info:
        FileSource("ring", path, seal_key_env=MASTER_ENV).load()
    return info.value


# -- creating a keyring --------------------------------------------------------------------


def test_missing_keyring_is_created_with_mode_0600_and_one_primary_key(tmp_path: Path) -> None:
    path = tmp_path / "new" / "ring.json"
    clock = CountingClock()
    source = FileSource("ring", path, clock=clock)
    assert source.create_if_missing() is True
    document = source.load()
    assert path.exists()
    assert mode_of(path) == 0o600
    assert document.data == path.read_bytes()
    ring = parse_keyring("ring", document.data)
    assert ring.format == "lifecycle"
    assert len(ring.keys) == 1
    key = ring.signing_key
    assert key.state is KeyState.PRIMARY
    assert key.created_at == NOW
    assert len(bytes.fromhex(key.secret)) == 32  # a fresh random 32-byte key, stored as hex
    assert clock.calls == 1


def test_creation_leaves_no_temporary_files(tmp_path: Path) -> None:
    FileSource("ring", tmp_path / "ring.json").create_if_missing()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring.json", "ring.json.lock"]
    assert mode_of(tmp_path / "ring.json.lock") == 0o600


def test_create_if_missing_creates_once_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    source = FileSource("ring", path)
    assert source.create_if_missing() is True
    first = path.read_bytes()
    assert source.create_if_missing() is False
    assert FileSource("ring", path).create_if_missing() is False
    assert FileSource("ring", path).load().data == first


def test_existing_keyring_is_not_replaced_by_create_if_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document())
    assert FileSource("ring", path).create_if_missing() is False
    assert FileSource("ring", path).load().data == flat_document()


def test_two_sources_generate_different_keys(tmp_path: Path) -> None:
    secrets_made = []
    for name in ("a", "b"):
        source = FileSource(name, tmp_path / f"{name}.json")
        source.create_if_missing()
        secrets_made.append(parse_keyring(name, source.load().data).signing_key.secret)
    assert secrets_made[0] != secrets_made[1]


@pytest.mark.parametrize("shared", [True, False], ids=["one-source", "source-per-thread"])
def test_concurrent_creations_create_the_keyring_exactly_once(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "ring.json"
    clock = CountingClock()
    one = FileSource("ring", path, clock=clock)
    barrier = threading.Barrier(8)

    def create_and_load(_: int) -> tuple[bool, Document]:
        source = one if shared else FileSource("ring", path, clock=clock)
        barrier.wait(timeout=10)
        created = source.create_if_missing()
        return created, source.load()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(create_and_load, range(8)))
    assert clock.calls == 1  # one keyring generated
    assert [created for created, _ in results].count(True) == 1
    documents = [d for _, d in results]
    assert len({d.data for d in documents}) == 1
    assert len({d.version_id for d in documents}) == 1
    assert documents[0].data == path.read_bytes()
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring.json", "ring.json.lock"]


def test_loading_a_missing_keyring_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        FileSource("ring", tmp_path / "ring.json").load()
    assert list(tmp_path.iterdir()) == []  # not the keyring, not even its lock file


def test_provision_creates_only_what_the_settings_ask_for(tmp_path: Path) -> None:
    asked = KeyringSettings("a", FileSourceSettings(tmp_path / "a.json", create=True))
    not_asked = KeyringSettings("b", FileSourceSettings(tmp_path / "b.json"))
    assert provision(asked) is True
    assert provision(asked) is False
    assert provision(not_asked) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.json.lock"]
    assert read_keyring(asked).format == "lifecycle"


def test_reading_through_the_factory_never_creates_even_with_create_true(tmp_path: Path) -> None:
    settings = KeyringSettings("ring", FileSourceSettings(tmp_path / "ring.json", create=True))
    with pytest.raises(SourceError) as info:
        read_keyring(settings)
    assert str(info.value) == f"keyring 'ring' could not be loaded: file:{tmp_path / 'ring.json'}: " + (
        "keyring file does not exist"
    )
    with pytest.raises(SourceError):
        make_source(settings).load()
    assert list(tmp_path.iterdir()) == []


def test_missing_file_without_create_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(SourceError, match="does not exist") as info:
        FileSource("ring", path).load()
    assert str(path) in str(info.value)
    assert not path.exists()


def test_unreadable_path_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(SourceError, match="cannot read keyring"):
        FileSource("ring", tmp_path / "dir.json").load()


def test_description_names_the_file_not_the_contents(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document())
    source = FileSource("ring", path)
    assert source.description == f"file:{path}"
    assert SECRET not in source.description


# -- permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_group_or_world_accessible_keyring_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "ring.json", flat_document(), mode=mode)
    with pytest.raises(SourceError) as info:
        FileSource("ring", path).load()
    message = str(info.value)
    assert "chmod 600" in message
    assert f"{mode:04o}" in message
    assert str(path) in message
    assert SECRET not in message


def test_permission_check_can_be_disabled(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document(), mode=0o644)
    assert FileSource("ring", path, check_permissions=False).load().data == flat_document()


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_keyring_is_accepted(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "ring.json", flat_document(), mode=mode)
    assert FileSource("ring", path).load().data == flat_document()


# -- version ids ---------------------------------------------------------------------------


def test_version_id_is_stable_while_the_file_is_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document())
    source = FileSource("ring", path)
    assert source.load().version_id == source.load().version_id


def test_version_id_changes_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document("a" * 40))
    source = FileSource("ring", path)
    first = source.load()
    write(tmp_path / "next.json", flat_document("b" * 40))  # same size, new file renamed over it
    os.replace(tmp_path / "next.json", path)
    second = source.load()
    assert second.data == flat_document("b" * 40)
    assert second.version_id != first.version_id


def test_version_id_changes_when_the_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document("a" * 40))
    source = FileSource("ring", path)
    first = source.load()
    path.write_bytes(flat_document("b" * 48))
    second = source.load()
    assert second.version_id != first.version_id


def test_version_id_changes_for_same_size_in_place_edit_with_the_same_mtime(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document("a" * 40))
    source = FileSource("ring", path)
    first = source.load()
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.write(flat_document("b" * 40))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same coarse timestamp tick
    second = source.load()
    assert second.data == flat_document("b" * 40)
    assert second.version_id != first.version_id


# -- sealing -------------------------------------------------------------------------------


def test_seal_round_trip_and_envelope_shape() -> None:
    plaintext = flat_document()
    sealed = sealing.seal(plaintext, MASTER)
    assert sealing.is_sealed(sealed)
    assert not sealing.is_sealed(plaintext)
    assert SECRET.encode() not in sealed
    envelope = json.loads(sealed)
    assert envelope[sealing.SEALED_MARKER] == 1
    assert envelope["alg"] == "AES-256-GCM"
    assert len(base64.b64decode(envelope["nonce"])) == 12
    assert sealing.unseal(sealed, MASTER, where="here") == plaintext
    assert sealing.seal(plaintext, MASTER) != sealed  # fresh nonce every time


@pytest.mark.parametrize("document", [b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"{"])
def test_is_sealed_is_false_for_anything_else(document: bytes) -> None:
    assert not sealing.is_sealed(document)


def test_sealed_file_round_trip_with_master_key_from_env(tmp_path: Path, master_env: str) -> None:
    path = sealed_file(tmp_path / "ring.json")
    document = FileSource("ring", path, seal_key_env=master_env).load()
    assert document.data == flat_document()
    assert parse_keyring("ring", document.data).signing_key.material == SECRET.encode()


def test_created_keyring_is_sealed_when_a_master_key_is_configured(tmp_path: Path, master_env: str) -> None:
    path = tmp_path / "ring.json"
    source = FileSource("ring", path, seal_key_env=master_env)
    assert source.create_if_missing() is True
    document = source.load()
    on_disk = path.read_bytes()
    assert sealing.is_sealed(on_disk)
    assert mode_of(path) == 0o600
    secret = parse_keyring("ring", document.data).signing_key.secret
    assert secret.encode() not in on_disk
    assert sealing.unseal(on_disk, MASTER, where="x") == document.data


def test_missing_master_key_env_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_ENV, raising=False)
    path = sealed_file(tmp_path / "ring.json")
    assert f"${MASTER_ENV}" in str(seal_error(path))
    with pytest.raises(SealError, match=MASTER_ENV):
        sealing.master_key_from_env(MASTER_ENV)


def test_missing_master_key_env_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_ENV, raising=False)
    path = tmp_path / "ring.json"
    with pytest.raises(SealError, match=MASTER_ENV):
        FileSource("ring", path, seal_key_env=MASTER_ENV).create_if_missing()
    assert not path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not*base64!", "is not base64"),
        (b64(b"k" * 16), "must hold 32 bytes"),
        (b64(b"k" * 33), "must hold 32 bytes"),
    ],
)
def test_malformed_master_key_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv(MASTER_ENV, value)
    with pytest.raises(SealError) as info:
        sealing.master_key_from_env(MASTER_ENV)
    assert message in str(info.value)
    assert MASTER_ENV in str(info.value)
    assert value not in str(info.value)


def _flip_ciphertext_byte(sealed: bytes) -> bytes:
    envelope = json.loads(sealed)
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    envelope["ciphertext"] = b64(bytes(ciphertext))
    return json.dumps(envelope).encode()


def test_wrong_key_corrupt_ciphertext_and_garbage_are_three_distinct_errors(tmp_path: Path, master_env: str) -> None:
    good = sealing.seal(flat_document(), MASTER)
    wrong_key = seal_error(write(tmp_path / "wrong.json", sealing.seal(flat_document(), OTHER_MASTER)))
    corrupt = seal_error(write(tmp_path / "corrupt.json", _flip_ciphertext_byte(good)))
    truncated = seal_error(write(tmp_path / "truncated.json", good[: len(good) // 2]))
    garbage = seal_error(write(tmp_path / "garbage.json", b"\x00garbage\xff" * 8))

    assert "wrong master key" in str(wrong_key)
    assert "corrupt (authentication failed)" in str(corrupt)
    assert "corrupt (envelope unreadable)" in str(truncated)
    assert "corrupt (envelope unreadable)" in str(garbage)
    assert len({str(wrong_key), str(corrupt), str(truncated)}) == 3
    for exc in (wrong_key, corrupt, truncated, garbage):
        assert str(tmp_path) in str(exc)  # names the file
        assert b64(MASTER) not in str(exc)
        assert SECRET not in str(exc)


@pytest.mark.parametrize(
    "envelope",
    [
        b"\x00\x01garbage",
        b"[]",
        b'{"hmac_gateway_sealed": 1, "alg": "AES-256-GCM"}',
        b'{"hmac_gateway_sealed": 1, "alg": "AES-256-GCM", "key_check": "x", "nonce": "***", "ciphertext": ""}',
    ],
)
def test_unreadable_envelopes_are_corrupt(envelope: bytes) -> None:
    with pytest.raises(SealError, match=r"corrupt \(envelope unreadable\)"):
        sealing.unseal(envelope, MASTER, where="w")


@pytest.mark.parametrize(
    "change",
    [{"hmac_gateway_sealed": 2}, {"alg": "AES-128-CBC"}],
)
def test_unsupported_envelope_version_or_algorithm(change: dict[str, object]) -> None:
    envelope = {**json.loads(sealing.seal(flat_document(), MASTER)), **change}
    with pytest.raises(SealError, match="unsupported sealed-file version or algorithm"):
        sealing.unseal(json.dumps(envelope).encode(), MASTER, where="w")


def test_tampered_nonce_is_corrupt_not_wrong_key() -> None:
    envelope = json.loads(sealing.seal(flat_document(), MASTER))
    envelope["nonce"] = b64(bytes(12))
    with pytest.raises(SealError, match=r"authentication failed"):
        sealing.unseal(json.dumps(envelope).encode(), MASTER, where="w")


def test_sealed_file_without_seal_key_env_is_a_source_error(tmp_path: Path) -> None:
    path = sealed_file(tmp_path / "ring.json")
    with pytest.raises(SourceError) as info:
        FileSource("ring", path).load()
    assert not isinstance(info.value, SealError)
    assert "sealed" in str(info.value)
    assert "seal_key_env" in str(info.value)


def test_plaintext_file_is_refused_when_sealing_is_configured(tmp_path: Path, master_env: str) -> None:
    path = write(tmp_path / "ring.json", flat_document())
    with pytest.raises(SealError):
        FileSource("ring", path, seal_key_env=master_env).load()


def test_sealed_file_permissions_are_still_checked(tmp_path: Path, master_env: str) -> None:
    path = write(tmp_path / "ring.json", sealing.seal(flat_document(), MASTER), mode=0o644)
    with pytest.raises(SourceError, match="chmod 600"):
        FileSource("ring", path, seal_key_env=master_env).load()


def test_document_repr_never_shows_the_secret(tmp_path: Path) -> None:
    secret = "s" * 48
    path = write(tmp_path / "ring.json", flat_document(secret))
    document = FileSource("ring", path).load()
    assert secret.encode() in document.data
    assert secret not in repr(document) and secret not in str(document)


# -- compare-and-swap writes ---------------------------------------------------------------


def writes_document(*entries: str) -> bytes:
    return json.dumps({"writes": list(entries)}).encode()


def temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_write_replaces_the_document_when_the_version_still_matches(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document("a" * 40), mode=0o400)
    source = FileSource("ring", path)
    read = source.load()
    written = source.write(flat_document("b" * 40), expected_version=read.version_id)
    assert written.data == flat_document("b" * 40)
    assert written.version_id != read.version_id
    assert source.load() == written
    assert mode_of(path) == 0o600
    assert temporaries(tmp_path) == []


def test_write_with_a_stale_version_is_a_conflict_and_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", writes_document())
    first, second = FileSource("ring", path), FileSource("ring", path)
    read_by_first, read_by_second = first.load(), second.load()
    assert read_by_first.version_id == read_by_second.version_id
    first.write(writes_document("first"), expected_version=read_by_first.version_id)
    with pytest.raises(WriteConflict) as info:
        second.write(writes_document("second"), expected_version=read_by_second.version_id)
    assert isinstance(info.value, SourceError)  # a keyring error to the CLI, with one line
    assert str(info.value) == f"file:{path}: the keyring changed since it was read"
    assert path.read_bytes() == writes_document("first")
    assert temporaries(tmp_path) == []


def test_write_expecting_no_document_creates_one_only_if_none_exists(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    source = FileSource("ring", path)
    source.write(writes_document("one"), expected_version=MISSING_VERSION)
    assert path.read_bytes() == writes_document("one")
    with pytest.raises(WriteConflict):
        source.write(writes_document("two"), expected_version=MISSING_VERSION)
    assert path.read_bytes() == writes_document("one")


def test_a_sealed_keyring_stays_sealed_when_written(tmp_path: Path, master_env: str) -> None:
    path = sealed_file(tmp_path / "ring.json")
    source = FileSource("ring", path, seal_key_env=master_env)
    read = source.load()
    source.write(flat_document("n" * 40), expected_version=read.version_id)
    on_disk = path.read_bytes()
    assert sealing.is_sealed(on_disk)
    assert b"n" * 40 not in on_disk
    assert sealing.unseal(on_disk, MASTER, where="x") == flat_document("n" * 40)
    assert source.load().data == flat_document("n" * 40)
    assert mode_of(path) == 0o600


def test_write_fsyncs_the_file_and_then_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "ring.json", writes_document())
    source = FileSource("ring", path)
    read = source.load()
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    source.write(writes_document("x"), expected_version=read.version_id)
    assert synced == ["file", "rename", "dir"]


def test_eight_processes_in_read_modify_write_loops_lose_no_update(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", writes_document())
    processes, writes_each = 8, 25
    counters = run_workers(file_worker, (str(path), None), processes, writes_each)
    entries = json.loads(path.read_bytes())["writes"]
    expected = {f"w{w}-{n}" for w in range(processes) for n in range(writes_each)}
    assert sorted(entries) == sorted(expected)  # every write present exactly once
    assert sum(c["conflicts"] for c in counters) > 0  # the processes really did race
    assert sum(c["retried_errors"] for c in counters) == 0
    assert temporaries(tmp_path) == []


def test_eight_processes_on_a_sealed_keyring_lose_no_update(tmp_path: Path, master_env: str) -> None:
    path = sealed_file(tmp_path / "ring.json", writes_document())
    counters = run_workers(file_worker, (str(path), master_env), 8, 10)
    entries = json.loads(FileSource("ring", path, seal_key_env=master_env).load().data)["writes"]
    assert sorted(entries) == sorted(f"w{w}-{n}" for w in range(8) for n in range(10))
    assert sealing.is_sealed(path.read_bytes())
    assert sum(c["conflicts"] for c in counters) > 0


_KILLED_BEFORE_RENAME = """
import os, signal, sys
from pathlib import Path
from gateway.keys.sources import FileSource

source = FileSource("ring", Path(sys.argv[1]))
current = source.load()
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # die after the temp file, before the rename
source.write(b'{"writes": ["lost"]}', expected_version=current.version_id)
"""


def test_a_writer_killed_between_temp_file_and_rename_leaves_the_old_document(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", writes_document("old"))
    before = FileSource("ring", path).load()
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_RENAME, str(path)], capture_output=True, timeout=60, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [left_behind] = temporaries(tmp_path)  # it died with the new document written aside
    assert left_behind.read_bytes() == b'{"writes": ["lost"]}'
    after = FileSource("ring", path).load()
    assert after == before  # the old document, whole and readable
    # the dead writer's lock died with it, and the next write sweeps its temporary away
    FileSource("ring", path).write(writes_document("old", "next"), expected_version=before.version_id)
    assert path.read_bytes() == writes_document("old", "next")
    assert temporaries(tmp_path) == []


# -- settings: one declaration of every default, and the README says the same ----------------


def _readme_keyring_defaults() -> dict[str, object]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### `[keyrings.<name>]`", 1)[1].split("\n### ", 1)[0]
    out: dict[str, object] = {}
    for names, values in re.findall(r"^\| (`[^|]+`) \| (`[^|]+`) \|", section, re.M):
        for name, value in zip(re.findall(r"`([^`]+)`", names), re.findall(r"`([^`]+)`", values), strict=True):
            out[name] = tomllib.loads(f"v = {value}")["v"]
    return out


def test_the_readme_documents_the_defaults_the_settings_declare() -> None:
    declared = {
        "encoding": DEFAULT_ENCODING,
        "refresh_interval_seconds": REFRESH_DEFAULTS.interval,
        "refresh_jitter": REFRESH_DEFAULTS.jitter,
        "max_staleness_seconds": REFRESH_DEFAULTS.max_staleness,
        "early_refresh_interval_seconds": REFRESH_DEFAULTS.early_refresh_interval,
        "backoff_cap_seconds": REFRESH_DEFAULTS.backoff_cap,
        "create": FILE_DEFAULTS.create,
        "check_permissions": FILE_DEFAULTS.check_permissions,
        "connect_timeout_seconds": SECRETS_MANAGER_DEFAULTS.connect_timeout,
        "read_timeout_seconds": SECRETS_MANAGER_DEFAULTS.read_timeout,
        "max_attempts": SECRETS_MANAGER_DEFAULTS.max_attempts,
    }
    documented = _readme_keyring_defaults()
    assert {name: documented.get(name) for name in declared} == declared
    assert RefreshPolicy() == REFRESH_DEFAULTS  # the cache's policy restates nothing


def test_config_falls_back_to_the_declared_defaults(tmp_path: Path) -> None:
    raw = {
        "keyrings": {
            "f": {"path": "f.json"},
            "a": {"source": "aws-secretsmanager", "secret_id": "s"},
        },
        "listeners": {"sign": {"port": 0}},
        "routes": [{"listener": "sign", "mode": "sign", "upstream": "http://127.0.0.1:9", "keyring": "f"}],
    }
    keyrings = config_mod.parse(raw, base_dir=tmp_path).keyrings
    assert keyrings["f"].settings == KeyringSettings("f", FileSourceSettings(tmp_path / "f.json"))
    assert keyrings["a"].settings == KeyringSettings("a", SecretsManagerSettings("s"))
