"""From settings to live objects: the one place that knows which class serves which source.

The proxy, the CLI and (later) the rotation controller all get their sources and caches here,
so none of them reaches into another for keys. Nothing here touches a file or the network
except ``provision``, which serve's start-up calls and ``keys`` never does.
"""

from __future__ import annotations

from gateway.clock import Clock, system_clock
from gateway.errors import KeyringError
from gateway.keys.aws import SecretsManagerSource
from gateway.keys.cache import KeyringCache
from gateway.keys.formats import parse_keyring
from gateway.keys.model import Keyring
from gateway.keys.settings import FileSourceSettings, KeyringSettings
from gateway.keys.sources import FileSource, KeySource


def _file_source(name: str, source: FileSourceSettings, clock: Clock) -> FileSource:
    return FileSource(
        name,
        source.path,
        seal_key_env=source.seal_key_env,
        previous_seal_key_env=source.previous_seal_key_env,
        check_permissions=source.check_permissions,
        clock=clock,
    )


def make_source(settings: KeyringSettings, clock: Clock = system_clock) -> KeySource:
    source = settings.source
    if isinstance(source, FileSourceSettings):
        return _file_source(settings.name, source, clock)
    return SecretsManagerSource(
        settings.name,
        source.secret_id,
        region=source.region,
        profile=source.profile,
        endpoint_url=source.endpoint_url,
        connect_timeout=source.connect_timeout,
        read_timeout=source.read_timeout,
        max_attempts=source.max_attempts,
    )


def make_cache(settings: KeyringSettings, clock: Clock = system_clock) -> KeyringCache:
    return KeyringCache(
        settings.name, make_source(settings, clock), encoding=settings.encoding, policy=settings.refresh, clock=clock
    )


def read_keyring(settings: KeyringSettings, clock: Clock = system_clock) -> Keyring:
    """Load and parse once, with no cache and no side effect (what ``keys`` shows).

    Raises KeyringError (of the failure's own class) in one line naming the keyring.
    """
    try:
        document = make_source(settings, clock).load()
        return parse_keyring(settings.name, document.data, encoding=settings.encoding, version_id=document.version_id)
    except KeyringError as exc:
        raise type(exc)(f"keyring {settings.name!r} could not be loaded: {exc}") from None


def provision(settings: KeyringSettings, clock: Clock = system_clock) -> bool:
    """Create a missing file keyring when its settings ask for it (serve's start-up only).

    True if a keyring was created. Raises KeyringError naming the keyring when it cannot be.
    """
    source = settings.source
    if not isinstance(source, FileSourceSettings) or not source.create:
        return False
    try:
        return _file_source(settings.name, source, clock).create_if_missing()
    except KeyringError as exc:
        raise type(exc)(f"keyring {settings.name!r} could not be created: {exc}") from None
