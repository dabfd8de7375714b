"""Where keyring documents live. A source reads, and writes by compare-and-swap, raw bytes;
parsing is ``formats``' job, caching is ``cache``'s and wiring one up from settings is
``factory``'s.

Sources are synchronous and called off the event loop (``asyncio.to_thread``).

Invariants of the file source:
- reading never writes: a missing file is an error; only ``create_if_missing`` (serve's
  start-up, when the config says ``create = true``) makes one;
- every write happens under an exclusive lock (``<file>.lock``, flock), goes to a temporary
  file that is fsynced, then renamed over the keyring, then the directory is fsynced: a reader
  sees the old document or the new one, never a mix, and a crash at any point leaves the old
  one readable;
- a write is a compare-and-swap: under the lock the current version is re-read and the write
  is refused with ``WriteConflict`` unless it is still the version the writer read;
- the file is mode 0600; a sealed keyring is written sealed; a file that group or others can
  read is refused unless the config allows it; a sealed file opens with its master key or not
  at all — during a master-key change, with ``seal_key_env``'s key or ``previous_seal_key_env``'s,
  and it is always written under ``seal_key_env``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.clock import Clock, system_clock, to_rfc3339
from gateway.errors import SourceError, WriteConflict
from gateway.keys import sealing
from gateway.keys.formats import dump_lifecycle
from gateway.keys.model import Key, Keyring, KeyState

MISSING_VERSION = ""  # the version a write expects when it creates a document that is not there yet


@dataclass(frozen=True, slots=True)
class Document:
    data: bytes = field(repr=False)
    version_id: str  # changes whenever the content changes


class KeySource(Protocol):
    description: str  # for logs and status: never a secret

    def load(self) -> Document: ...

    def write(self, document: bytes, *, expected_version: str) -> Document:
        """Store ``document`` if the stored version is still ``expected_version``.

        Raises ``WriteConflict`` when someone else wrote first (re-read, re-plan, retry), and
        ``SourceError`` when the outcome is unknown or the write failed.
        """
        ...


def new_key_id(now: float) -> str:
    return "key-" + to_rfc3339(now).replace(":", "").replace("-", "") + "-" + secrets.token_hex(2)


def initial_keyring(name: str, now: float) -> Keyring:
    """A fresh keyring with one random 32-byte primary key (hex, used verbatim as raw)."""
    key = Key(
        id=new_key_id(now),
        material=b"",
        state=KeyState.PRIMARY,
        secret=secrets.token_hex(32),
        created_at=now,
        promoted_at=now,
    )
    return Keyring(name=name, keys=(key,), signing_key_id=key.id, format="lifecycle")


def content_version(plaintext: bytes) -> str:
    # The content itself decides: an in-place edit within one mtime tick is still a new version,
    # and re-sealing the same keyring (a fresh nonce) is not.
    return hashlib.sha256(plaintext).hexdigest()[:32]


class FileSource:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        seal_key_env: str | None = None,
        previous_seal_key_env: str | None = None,
        check_permissions: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        self.name = name
        self.path = path
        self.seal_key_env = seal_key_env
        self.previous_seal_key_env = previous_seal_key_env
        self.check_permissions = check_permissions
        self.clock = clock
        self.description = f"file:{path}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock (and so does the death of the process)

    # -- reading ----------------------------------------------------------------------------

    def load(self) -> Document:
        return self.load_sealed()[0]

    def load_sealed(self) -> tuple[Document, str | None]:
        """The document, and the variable whose master key opened it (None: not sealed)."""
        try:
            with open(self.path, "rb") as handle:
                info = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            raise SourceError(f"{self.description}: keyring file does not exist") from None
        except OSError as exc:
            raise SourceError(f"{self.description}: cannot read keyring: {exc.strerror}") from None
        if self.check_permissions and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SourceError(
                f"{self.description}: mode {stat.S_IMODE(info.st_mode):04o} lets others read the keyring; "
                f"run chmod 600 on it (or set check_permissions = false)"
            )
        opened_with = None
        if self.seal_key_env:
            variables = [self.seal_key_env, *([self.previous_seal_key_env] if self.previous_seal_key_env else [])]
            data, opened_with = sealing.unseal_any(data, variables, where=self.description)
        elif sealing.is_sealed(data):
            raise SourceError(f"{self.description}: the file is sealed; set seal_key_env in its keyring config")
        return Document(data=data, version_id=content_version(data)), opened_with

    def _current_version(self) -> str:
        if not self.path.exists():
            return MISSING_VERSION
        return self.load().version_id

    # -- writing ----------------------------------------------------------------------------

    def create_if_missing(self) -> bool:
        """Create the keyring with one fresh primary key if it does not exist. True if created."""
        if self.path.exists():
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked():
                if self.path.exists():
                    return False
                self._replace_locked(dump_lifecycle(initial_keyring(self.name, self.clock())).encode())
        except OSError as exc:
            raise SourceError(f"{self.description}: cannot create keyring: {exc.strerror}") from None
        return True

    def write(self, document: bytes, *, expected_version: str) -> Document:
        try:
            with self._locked():
                if self._current_version() != expected_version:
                    raise WriteConflict(f"{self.description}: the keyring changed since it was read")
                self._replace_locked(document)
        except OSError as exc:
            raise SourceError(f"{self.description}: cannot write keyring: {exc.strerror}") from None
        return Document(data=document, version_id=content_version(document))

    def _replace_locked(self, plaintext: bytes) -> None:
        """Temp file, fsync, rename, fsync the directory. The caller holds the lock."""
        data = plaintext
        if self.seal_key_env:
            data = sealing.seal(plaintext, sealing.master_key_from_env(self.seal_key_env))
        self._remove_stale_temporaries()
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def _remove_stale_temporaries(self) -> None:
        # Under the lock no other writer is mid-write, so any temporary left is from a writer
        # that died between writing it and renaming it; it may hold key material.
        for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
