"""CLI exit codes: one place, documented in the README (keep both in step)."""

from __future__ import annotations

OK = 0
FAILURE = 1  # unexpected error (a bug: run with --debug for the traceback)
CONFIG_ERROR = 2  # invalid configuration or command-line usage
KEYRING_ERROR = 3  # a keyring could not be loaded at start (missing, malformed, sealed without key)
BIND_ERROR = 4  # a listener could not bind its address
REPLAY_STORE_ERROR = 5  # the shared replay store (Redis) did not answer at start
INTERRUPTED = 130  # stopped by Ctrl-C before start-up completed
