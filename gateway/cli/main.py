"""The registry of commands and the parser built from it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__, exitcodes
from gateway import config as config_mod
from gateway.cli import check_config, echo, keys, reseal, rotate, serve, sign, verify
from gateway.cli.base import Command, invoke

COMMANDS: tuple[Command, ...] = (
    serve.COMMAND,
    check_config.COMMAND,
    keys.COMMAND,
    reseal.COMMAND,
    rotate.COMMAND,
    echo.COMMAND,
    sign.COMMAND,
    verify.COMMAND,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=exitcodes.PROG, description="HMAC signing and verifying gateway (RFC 9421).")
    parser.add_argument("--version", action="version", version=f"{exitcodes.PROG} {__version__}")
    parser.add_argument(
        "--config",
        help=f"TOML config file (default: ${config_mod.CONFIG_ENV} or {config_mod.DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code or 0)
    command = next(c for c in COMMANDS if c.name == args.command)
    return invoke(command, args)


def main() -> None:
    sys.exit(run())
