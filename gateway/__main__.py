"""``python -m gateway``: the same command as the ``hmac-gateway`` entry point."""

from __future__ import annotations

from gateway.cli import main

main()
