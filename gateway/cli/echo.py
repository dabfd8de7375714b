"""``echo``: a loopback upstream that answers with what it received (the demo's far end)."""

from __future__ import annotations

import argparse

from aiohttp import web

from gateway import config as config_mod
from gateway import exitcodes
from gateway.cli.base import Command, status
from gateway.echo import build_echo_app
from gateway.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)


def run(args: argparse.Namespace) -> int:
    if not config_mod.is_loopback(args.host):
        raise ConfigError(["echo binds to loopback only (--host 127.0.0.1 or ::1)"])
    status(f"echo upstream on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    web.run_app(build_echo_app(), host=args.host, port=args.port, print=None, access_log=None)
    return exitcodes.OK


COMMAND = Command("echo", "run a loopback upstream that echoes what it receives", add_arguments, run)
