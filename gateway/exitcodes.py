"""CLI exit codes, and the one error-line format every command (and every serve worker) uses.

The README's exit-code table lists every code here (a test keeps the two in step). An error
is reported as ``hmac-gateway: <message>`` on one line of stderr; a configuration error with
several problems as a count line followed by one ``  - <problem>`` line each. Messages never
carry key material (see ``gateway.errors``).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import ConfigError, GatewayError, KeyringError, RotationConflict, SourceUnavailable
from gateway.rotation.policy import Refusal, RotationRefused

OK = 0
FAILURE = 1  # unexpected error (a bug: run with --debug for the traceback)
CONFIG_ERROR = 2  # invalid configuration or command-line usage
KEYRING_ERROR = 3  # a keyring could not be loaded (missing, malformed, sealed without key) or created
BIND_ERROR = 4  # a listener could not bind its address
REPLAY_STORE_ERROR = 5  # the shared replay store (Redis) did not answer at start
NOT_YET = 6  # rotate: refused for now (too early, overlap active, a key already pending); the line says how long
REFUSED = 7  # rotate: the lifecycle does not allow this step (nothing to promote/retire/roll back, bad secret, ...)
WRITE_CONFLICT = 8  # rotate: other writers won every compare-and-swap attempt; nothing lost, run again
SOURCE_UNAVAILABLE = 9  # rotate: the keyring source could not be read or written (unreachable, denied, ...)
VERIFY_FAILED = 10  # `verify`: the captured request did not verify (the reason is printed)
INTERRUPTED = 130  # stopped by Ctrl-C before start-up completed

PROG = "hmac-gateway"


def error_lines(message: str, problems: Sequence[str] = ()) -> list[str]:
    """``hmac-gateway: <message>[: <the one problem>]``, or a count line and one line per problem."""
    if len(problems) == 1:
        return [f"{PROG}: {message}: {problems[0]}"]
    if problems:
        return [f"{PROG}: {message}: {len(problems)} problems:", *(f"  - {p}" for p in problems)]
    return [f"{PROG}: {message}"]


# Refusals that waiting cures: scripts retry these later; the others need a different request.
WAIT_REFUSALS = frozenset({Refusal.TOO_EARLY, Refusal.OVERLAP_ACTIVE, Refusal.PENDING_EXISTS})


def describe(exc: GatewayError) -> tuple[int, list[str]]:
    """The exit code and the stderr lines for an error a command raised on purpose."""
    if isinstance(exc, RotationRefused):
        code = NOT_YET if exc.code in WAIT_REFUSALS else REFUSED
        return code, error_lines(f"refused ({exc.code.value}): {exc}")
    if isinstance(exc, RotationConflict):
        return WRITE_CONFLICT, error_lines(str(exc))
    if isinstance(exc, SourceUnavailable):
        return SOURCE_UNAVAILABLE, error_lines(str(exc))
    if isinstance(exc, ConfigError):
        return CONFIG_ERROR, error_lines("config error", exc.problems)
    if isinstance(exc, KeyringError):
        return KEYRING_ERROR, error_lines(str(exc))
    return FAILURE, error_lines(str(exc))
