"""Where keyring documents live. A source reads (and, for the controller, writes) raw bytes;
parsing is ``formats``' job and caching is ``cache``'s.

Sources are synchronous and called off the event loop (``asyncio.to_thread``).

Invariants of the file source:
- the file is created, if asked, with a fresh random primary key, mode 0600, atomically
  (temp file + rename) under an exclusive lock, so concurrent starts create it once;
- a file that group or others can read is refused unless the config allows it;
- a sealed file is opened with the master key from the environment, or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.clock import Clock, system_clock, to_rfc3339
from gateway.errors import SourceError
from gateway.keys import sealing
from gateway.keys.formats import dump_lifecycle
from gateway.keys.model import Key, Keyring, KeyState


@dataclass(frozen=True, slots=True)
class Document:
    data: bytes = field(repr=False)
    version_id: str  # changes whenever the content changes


class KeySource(Protocol):
    description: str  # for logs and status: never a secret

    def load(self) -> Document: ...


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


class FileSource:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        create: bool = False,
        seal_key_env: str | None = None,
        check_permissions: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        self.name = name
        self.path = path
        self.create = create
        self.seal_key_env = seal_key_env
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
            os.close(fd)  # closing releases the lock

    def ensure_exists(self) -> bool:
        """Create the keyring if configured to and missing. True if it was created."""
        if not self.create or self.path.exists():
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked():
                if self.path.exists():
                    return False
                document = dump_lifecycle(initial_keyring(self.name, self.clock())).encode()
                self._write_locked(document)
        except OSError as exc:
            raise SourceError(f"{self.description}: cannot create keyring: {exc.strerror}") from None
        return True

    def _write_locked(self, plaintext: bytes) -> None:
        data = plaintext
        if self.seal_key_env:
            data = sealing.seal(plaintext, sealing.master_key_from_env(self.seal_key_env))
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

    def load(self) -> Document:
        self.ensure_exists()
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
        if self.seal_key_env:
            data = sealing.unseal(data, sealing.master_key_from_env(self.seal_key_env), where=self.description)
        elif sealing.is_sealed(data):
            raise SourceError(f"{self.description}: the file is sealed; set seal_key_env in its keyring config")
        # The content itself decides: an in-place edit within one mtime tick is still a new version.
        return Document(data=data, version_id=hashlib.sha256(data).hexdigest()[:32])
