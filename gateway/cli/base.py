"""What every command shares: its shape, the error wrapper, and where output goes.

Invariants: a command's data goes to stdout and everything else to stderr; an error is one
line (``gateway.exitcodes.describe``) and an exit code, never a traceback unless ``--debug``
asked for one; ``--json`` documents carry ``"schema": JSON_SCHEMA``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import config as config_mod
from gateway import exitcodes
from gateway.errors import GatewayError

JSON_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def status(line: str) -> None:
    """A status line for the operator (stderr): never data, never a secret."""
    print(line, file=sys.stderr)


def emit_json(document: dict[str, Any]) -> None:
    print(json.dumps({"schema": JSON_SCHEMA, **document}, indent=2))


def report(exc: GatewayError) -> int:
    code, lines = exitcodes.describe(exc)
    for line in lines:
        status(line)
    return code


def load_config(args: argparse.Namespace) -> config_mod.GatewayConfig:
    return config_mod.load(config_mod.resolve_path(args.config))


def invoke(command: Command, args: argparse.Namespace) -> int:
    try:
        return command.run(args)
    except GatewayError as exc:
        return report(exc)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        status(f"{exitcodes.PROG}: unexpected error ({type(exc).__name__}); run with --debug for details")
        return exitcodes.FAILURE
