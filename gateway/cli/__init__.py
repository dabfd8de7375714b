"""The ``hmac-gateway`` command: one module per command, one registry, one error wrapper.

Adding a command is a new module here exposing ``COMMAND`` (a ``Command``) and one line in
``main.COMMANDS``. Commands return an exit code (``gateway.exitcodes``); ``base.invoke`` maps
errors to codes and prints one line on stderr (a traceback only with ``--debug``). Data goes to
stdout, status to stderr; machine output (``--json``) carries ``"schema": 1``. No command takes
a secret as an argument or prints one.
"""

from __future__ import annotations

from gateway.cli.main import COMMANDS, main, run

__all__ = ["COMMANDS", "main", "run"]
