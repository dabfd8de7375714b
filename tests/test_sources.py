"""File keyring source and sealing at rest (gateway/keys/sources.py, gateway/keys/sealing.py)."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.errors import SealError, SourceError
from gateway.keys import sealing
from gateway.keys.formats import parse_keyring
from gateway.keys.model import KeyState
from gateway.keys.sources import Document, FileSource

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
    source = FileSource("ring", path, create=True, clock=clock)
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
    FileSource("ring", tmp_path / "ring.json", create=True).load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring.json", "ring.json.lock"]
    assert mode_of(tmp_path / "ring.json.lock") == 0o600


def test_ensure_exists_creates_once_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    source = FileSource("ring", path, create=True)
    assert source.ensure_exists() is True
    first = path.read_bytes()
    assert source.ensure_exists() is False
    assert FileSource("ring", path, create=True).load().data == first


def test_existing_keyring_is_not_replaced_when_create_is_true(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", flat_document())
    assert FileSource("ring", path, create=True).load().data == flat_document()


def test_two_sources_generate_different_keys(tmp_path: Path) -> None:
    a = FileSource("a", tmp_path / "a.json", create=True).load()
    b = FileSource("b", tmp_path / "b.json", create=True).load()
    secret_a = parse_keyring("a", a.data).signing_key.secret
    secret_b = parse_keyring("b", b.data).signing_key.secret
    assert secret_a != secret_b


@pytest.mark.parametrize("shared", [True, False], ids=["one-source", "source-per-thread"])
def test_concurrent_loads_create_the_keyring_exactly_once(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "ring.json"
    clock = CountingClock()
    one = FileSource("ring", path, create=True, clock=clock)
    barrier = threading.Barrier(8)

    def load(_: int) -> Document:
        source = one if shared else FileSource("ring", path, create=True, clock=clock)
        barrier.wait(timeout=10)
        return source.load()

    with ThreadPoolExecutor(max_workers=8) as pool:
        documents = list(pool.map(load, range(8)))
    assert clock.calls == 1  # one keyring generated
    assert len({d.data for d in documents}) == 1
    assert len({d.version_id for d in documents}) == 1
    assert documents[0].data == path.read_bytes()
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring.json", "ring.json.lock"]


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
    document = FileSource("ring", path, create=True, seal_key_env=master_env).load()
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
        FileSource("ring", path, create=True, seal_key_env=MASTER_ENV).load()
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
