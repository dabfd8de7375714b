"""``serve``: run the listeners, in one process or ``--workers N`` sharing each port.

Invariants: everything that can be refused is refused before any process starts or any file
is written; missing file keyrings with ``create = true`` are created here, once, in the
parent (the one place the product creates a keyring); with ``--workers`` every keyring that
must load is checked once before forking, so a bad keyring is one line, not N.
"""

from __future__ import annotations

import argparse

from gateway import config as config_mod
from gateway import server
from gateway.cli.base import Command
from gateway.errors import ConfigError, KeyringError
from gateway.keys.factory import provision, read_keyring


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the ports (SO_REUSEPORT)")


def _refuse_workers(cfg: config_mod.GatewayConfig, workers: int) -> None:
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
                f"--workers {workers}: verify route(s) {', '.join(guarded)} use replay protection, and the "
                "in-memory replay store is per process, so a replay could pass once per worker; set "
                "replay_store = 'redis' in [gateway], or run one worker"
            ]
        )


def _provision(cfg: config_mod.GatewayConfig) -> None:
    for kc in cfg.keyrings.values():
        try:
            provision(kc.settings)
        except KeyringError:
            if not kc.start_degraded:
                raise
            # Asked to start anyway: the keyring's cache reports the failure and /readyz stays 503.


def run(args: argparse.Namespace) -> int:
    path = config_mod.resolve_path(args.config)
    cfg = config_mod.load(path)  # fail here, once, before any process starts
    if args.workers < 1:
        raise ConfigError(["--workers must be at least 1"])
    if args.workers > 1:
        _refuse_workers(cfg, args.workers)
    _provision(cfg)
    if args.workers == 1:
        return server.serve_process(str(path), reuse_port=False)
    for kc in cfg.keyrings.values():
        if not kc.start_degraded:
            read_keyring(kc.settings)
    return server.serve_workers(str(path), args.workers)


COMMAND = Command("serve", "run the gateway's listeners", add_arguments, run)
