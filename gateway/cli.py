"""The ``hmac-gateway`` command.

Commands return an exit code (``gateway.exitcodes``); ``main`` maps errors to codes and
prints one line on stderr (a traceback only with ``--debug``). Data goes to stdout, status
to stderr. Machine output (``--json``) carries ``"schema": 1``. No command takes a secret
as an argument or prints one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway import __version__, exitcodes, server
from gateway import config as config_mod
from gateway.clock import system_clock, to_rfc3339
from gateway.echo import build_echo_app
from gateway.errors import ConfigError, GatewayError, KeyringError
from gateway.keys.formats import parse_keyring
from gateway.proxy.runtime import make_source

JSON_SCHEMA = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmac-gateway", description="HMAC signing and verifying gateway (RFC 9421).")
    parser.add_argument("--version", action="version", version=f"hmac-gateway {__version__}")
    parser.add_argument(
        "--config",
        help=f"TOML config file (default: ${config_mod.CONFIG_ENV} or {config_mod.DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway's listeners")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the ports (SO_REUSEPORT)")

    check = sub.add_parser("check-config", help="validate the configuration (exit 2 if invalid)")
    check.add_argument("--json", action="store_true", help="print the effective configuration as JSON")

    keys = sub.add_parser("keys", help="list keyrings and key states (never secrets)")
    keys.add_argument("--json", action="store_true", help="machine-readable output")

    echo = sub.add_parser("echo", help="run a loopback upstream that echoes what it receives")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=8090)
    return parser


def _load_config(args: argparse.Namespace) -> config_mod.GatewayConfig:
    return config_mod.load(config_mod.resolve_path(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, **cfg.to_public_dict()}, indent=2))
    print(
        f"config OK: {cfg.source} ({len(cfg.listeners)} listeners, {len(cfg.routes)} routes, "
        f"{len(cfg.keyrings)} keyrings)",
        file=sys.stderr,
    )
    return exitcodes.OK


def _key_rows(cfg: config_mod.GatewayConfig) -> dict[str, Any]:
    now = system_clock()
    out: dict[str, Any] = {}
    for name, kc in cfg.keyrings.items():
        document = make_source(kc, system_clock).load()
        keyring = parse_keyring(name, document.data, encoding=kc.encoding, version_id=document.version_id)
        out[name] = {
            "format": keyring.format,
            "signing_key": keyring.signing_key_id,
            "keys": [
                {
                    "id": k.id,
                    "state": k.state.value,
                    "verifies_now": k.verifies_at(now),
                    "created_at": to_rfc3339(k.created_at) if k.created_at else None,
                    "promoted_at": to_rfc3339(k.promoted_at) if k.promoted_at else None,
                    "expires_at": to_rfc3339(k.expires_at) if k.expires_at else None,
                }
                for k in keyring.keys
            ],
        }
    return out


def cmd_keys(args: argparse.Namespace) -> int:
    rows = _key_rows(_load_config(args))
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, "keyrings": rows}, indent=2))
        return exitcodes.OK
    for name, ring in rows.items():
        print(f"{name}  ({ring['format']}, signing with {ring['signing_key']})")
        for k in ring["keys"]:
            expiry = f"  expires {k['expires_at']}" if k["expires_at"] else ""
            active = "" if k["verifies_now"] else "  (expired: no longer verifies)"
            print(f"  {k['id']:<40} {k['state']:<9}{expiry}{active}")
    return exitcodes.OK


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_mod.resolve_path(args.config)
    cfg = config_mod.load(path)  # fail here, once, before any process starts
    if args.workers < 1:
        raise ConfigError(["--workers must be at least 1"])
    if args.workers == 1:
        return server.serve_process(str(path), reuse_port=False)
    zero = [n for n, lc in cfg.listeners.items() if lc.port == 0]
    if zero:
        raise ConfigError([f"[listeners.{zero[0]}].port: port 0 cannot be shared by --workers"])
    if cfg.echo is not None:
        raise ConfigError(["[echo]: the demo echo upstream runs with one worker only"])
    guarded = [r.name for r in cfg.routes if r.mode == "verify" and r.replay_protection]
    if guarded and cfg.replay_store != "redis":
        # Each worker would hold its own in-memory replay store and SO_REUSEPORT spreads
        # connections across them: a replayed signature could pass once per worker.
        raise ConfigError(
            [
                f"--workers {args.workers}: verify route(s) {', '.join(guarded)} use replay protection, and the "
                "in-memory replay store is per process, so a replay could pass once per worker; set "
                "replay_store = 'redis' in [gateway], or run one worker"
            ]
        )
    if not any(kc.start_degraded for kc in cfg.keyrings.values()):
        _key_rows(cfg)  # creates missing keyrings once and fails fast with one line, before forking
    return server.serve_workers(str(path), args.workers)


def cmd_echo(args: argparse.Namespace) -> int:
    if not config_mod.is_loopback(args.host):
        raise ConfigError(["echo binds to loopback only (--host 127.0.0.1 or ::1)"])
    print(f"echo upstream on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    web.run_app(build_echo_app(), host=args.host, port=args.port, print=None, access_log=None)
    return exitcodes.OK


COMMANDS = {"serve": cmd_serve, "check-config": cmd_check_config, "keys": cmd_keys, "echo": cmd_echo}


def run(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        if len(exc.problems) == 1:
            print(f"hmac-gateway: config error: {exc.problems[0]}", file=sys.stderr)
        else:
            print(f"hmac-gateway: config error: {len(exc.problems)} problems:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    except KeyringError as exc:
        print(f"hmac-gateway: keyring error: {exc}", file=sys.stderr)
        return exitcodes.KEYRING_ERROR
    except GatewayError as exc:
        print(f"hmac-gateway: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"hmac-gateway: unexpected error ({type(exc).__name__}); run with --debug for details",
            file=sys.stderr,
        )
        return exitcodes.FAILURE


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
