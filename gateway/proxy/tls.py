"""TLS towards an upstream: which CAs to trust, which client certificate to present, and the
lowest protocol version to accept. Built once per route at start.

Invariants:
- an ``https`` upstream's certificate is always verified and its host name checked, against the
  route's own CA bundle when it names one (a private CA replaces the system store, so a public
  CA cannot vouch for an internal name), else against the system store;
- a client certificate's key is read from a file (mode 0600 advised) and never logged;
- problems with the files are ``TLSConfigError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(ValueError):
    """A CA bundle, certificate or key that cannot be used (the message names the file)."""


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    ca_file: Path | None = None  # PEM bundle of the CAs to trust instead of the system store
    cert_file: Path | None = None  # PEM client certificate (chain) for mutual TLS
    key_file: Path | None = None  # its private key (PEM, unencrypted)
    min_version: str = "1.2"  # "1.2" or "1.3"


def client_context(settings: UpstreamTLS) -> ssl.SSLContext:
    """The context for connections to one upstream; raises TLSConfigError."""
    if settings.min_version not in TLS_VERSIONS:
        raise TLSConfigError(f"minimum TLS version must be one of {', '.join(TLS_VERSIONS)}")
    if (settings.cert_file is None) != (settings.key_file is None):
        raise TLSConfigError("a client certificate needs both its certificate file and its key file")
    ca = settings.ca_file
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{ca}: not a readable PEM CA bundle ({_why(exc)})") from None
    context.minimum_version = TLS_VERSIONS[settings.min_version]
    if settings.cert_file is not None and settings.key_file is not None:
        try:
            context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"{settings.cert_file} / {settings.key_file}: not a usable certificate and key ({_why(exc)})"
            ) from None
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "invalid PEM"
    if isinstance(exc, OSError):
        return exc.strerror or "cannot read"
    return type(exc).__name__
