"""Where the Redis replay store lives: ``redis://``, ``rediss://`` and ``unix://`` URLs parsed
into a ``RedisAddress``. Pure (config validates URLs with it without importing the client).

Invariant: neither a ``repr`` nor an error message repeats the URL or the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """Where and how to connect, from ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: bool = False
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Raises ValueError with a message that never repeats the URL (it may hold a password)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        in_query = query.get("password")
        password = unquote(parts.password) if parts.password else (in_query[0] if in_query else None)
        username = unquote(parts.username) if parts.username else None
        db_in_query = query.get("db")
        db_text = db_in_query[0] if db_in_query else ""
        if parts.scheme in ("redis", "rediss"):
            db_text = parts.path.strip("/") or db_text
        try:
            db = int(db_text) if db_text else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError("redis_url: the port and database must be numbers") from None
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("redis_url: unix:// needs a socket path")
            return cls(path=parts.path, db=db, username=username or None, password=password)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("redis_url: expected redis://host:port/db, rediss://... or unix:///path")
        return cls(
            host=parts.hostname,
            port=port,
            tls=parts.scheme == "rediss",
            db=db,
            username=username or None,
            password=password,
        )
