"""``check-config``: validate the configuration, as ``serve`` would, and say so."""

from __future__ import annotations

import argparse

from gateway import exitcodes
from gateway.cli.base import Command, emit_json, load_config, status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the effective configuration as JSON")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.json:
        emit_json(cfg.to_public_dict())
    status(
        f"config OK: {cfg.source} ({len(cfg.listeners)} listeners, {len(cfg.routes)} routes, "
        f"{len(cfg.keyrings)} keyrings)"
    )
    return exitcodes.OK


COMMAND = Command("check-config", "validate the configuration (exit 2 if invalid)", add_arguments, run)
