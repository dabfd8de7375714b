"""``rotate``: run the key lifecycle on one keyring (``--keyring``) or every one (``--all``).

No step advances as far as the clock allows (what cron runs); ``add``, ``promote``, ``retire``,
``rollback`` do one step; ``status`` shows what advancing would do, and writes nothing.

Invariants: an imported secret is read from standard input only, never from an argument or the
environment; nothing printed, logged or audited holds a secret; what was done goes to stdout
(or one ``--json`` document), refusals and errors one line each on stderr, audit records on
stderr and in the keyring's ``audit_log``; the exit code is the first keyring's failure
(``gateway.exitcodes``), after every keyring was tried.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from gateway import exitcodes
from gateway.cli.base import Command, emit_json, load_config, report, status
from gateway.clock import to_rfc3339
from gateway.errors import ConfigError, GatewayError
from gateway.keys.factory import make_source
from gateway.keys.settings import KeyringSettings
from gateway.rotation.audit import AuditLog, Auditor, actor_for
from gateway.rotation.controller import Controller, Outcome, emergency_warning, next_step_line
from gateway.rotation.policy import Plan, Request, RotationRefused, Step

STEPS = ("add", "promote", "retire", "rollback", "status")
AUDIT_LOG_ENV = "HMAC_GATEWAY_AUDIT_LOG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--keyring", metavar="NAME", help="the keyring to rotate")
    which.add_argument("--all", action="store_true", help="every configured keyring, in config order")
    parser.add_argument("step", nargs="?", choices=STEPS, help="one step (default: advance as far as allowed)")
    parser.add_argument("--dry-run", action="store_true", help="show the exact before/after; write nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output (schema 1)")
    parser.add_argument("--emergency", action="store_true", help="a key is compromised: add, promote, expire it")
    parser.add_argument("--reason", default="", help="why (required with --emergency; recorded in the audit)")
    parser.add_argument("--grace", type=float, metavar="SECONDS", help="--emergency: the old key verifies this long")
    parser.add_argument("--secret-stdin", action="store_true", help="add: import the new key's secret from stdin")
    parser.add_argument("--encoding", choices=("raw", "hex", "base64"), help="add: how the imported secret decodes")
    parser.add_argument("--key-id", metavar="ID", help="add: the new key's id; retire: the one key to remove")
    parser.add_argument(
        "--override-overlap",
        type=float,
        metavar="SECONDS",
        help="promote with an overlap shorter than the keyring's (recorded in the audit)",
    )
    parser.add_argument("--audit-log", metavar="PATH", help=f"append audit records here (default: ${AUDIT_LOG_ENV})")


def _request(args: argparse.Namespace) -> Request:
    problems = []
    if args.emergency and args.step is not None:
        problems.append("--emergency is a step of its own: give no other step")
    if args.grace is not None and not args.emergency:
        problems.append("--grace applies to --emergency only")
    if args.secret_stdin and args.step != "add" and not args.emergency:
        problems.append("--secret-stdin applies to add (and --emergency) only")
    if args.secret_stdin and args.all:
        problems.append("--secret-stdin imports one key into one keyring: use --keyring")
    if args.encoding and not args.secret_stdin:
        problems.append("--encoding describes a secret given with --secret-stdin")
    if problems:
        raise ConfigError(problems)
    step = Step.EMERGENCY if args.emergency else Step(args.step) if args.step not in (None, "status") else Step.ADVANCE
    return Request(
        step=step,
        reason=args.reason,
        secret=_read_secret() if args.secret_stdin else None,
        encoding=args.encoding,
        key_id=args.key_id,
        overlap=args.override_overlap,
        override_overlap=args.override_overlap is not None,
        grace=args.grace,
    )


def _read_secret() -> str:
    if sys.stdin.isatty():
        secret = getpass.getpass("secret (not echoed): ")
    else:
        secret = sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        raise ConfigError(["--secret-stdin: standard input held no secret"])
    return secret


def _audit_path(args: argparse.Namespace, settings: KeyringSettings) -> Path | None:
    chosen = args.audit_log or os.environ.get(AUDIT_LOG_ENV)
    return Path(chosen) if chosen else settings.rotation.audit_log


def _text(outcome: Outcome, settings: KeyringSettings) -> list[str]:
    p = outcome.plan
    if outcome.dry_run:
        head = "dry run, nothing written"
    elif outcome.written:
        head = "written"
    else:
        head = "no change"
    lines = [f"keyring {p.keyring!r}: {p.step.value} at {_ts(p.now)} ({head})"]
    lines += [f"  {a}" for a in p.actions]
    if outcome.dry_run and p.changed:
        lines += _before_after(p)
    lines += [f"  note: {n}" for n in p.notes]
    lines += emergency_warning(p, settings)
    lines.append(f"  next step possible at {_ts(p.next_step_at)}" if p.next_step_at else "  no next step on its own")
    return lines


def _before_after(p: Plan) -> list[str]:
    lines = [f"  before ({p.before_format}):"]
    lines += [f"    {_row(s.to_dict())}" for s in p.before]
    lines.append(f"  after ({p.after_format}):")
    lines += [f"    {_row(s.to_dict())}" for s in p.after]
    return lines


def _row(d: dict[str, Any]) -> str:
    stamps = " ".join(f"{k}={d[k]}" for k in ("created_at", "promoted_at", "expires_at") if d[k])
    return f"{d['id']}  {d['state']}  {stamps}".rstrip()


def _ts(value: float | None) -> str:
    return "-" if value is None else to_rfc3339(value)


def _one(args: argparse.Namespace, settings: KeyringSettings, request: Request) -> tuple[int, dict[str, Any]]:
    source = make_source(settings)
    auditor = Auditor(
        AuditLog(_audit_path(args, settings)), settings.name, source.description, lambda: actor_for(settings)
    )
    controller = Controller(settings, source, auditor)
    try:
        if args.step == "status":
            keyring, the_plan = controller.preview()
            if not args.json:
                print(f"keyring {settings.name!r} ({keyring.format}, signing with {keyring.signing_key_id})")
                for s in the_plan.before:
                    print(f"  {_row(s.to_dict())}")
                print(f"  {next_step_line(keyring, the_plan)}")
                for note in the_plan.notes:
                    print(f"  note: {note}")
            return exitcodes.OK, {**the_plan.to_dict(), "would": next_step_line(keyring, the_plan)}
        outcome = controller.run(request, dry_run=args.dry_run)
    except RotationRefused as exc:
        code = report(exc)
        return code, {
            "refused": {"code": exc.code.value, "message": str(exc), "seconds_remaining": exc.seconds_remaining}
        }
    except GatewayError as exc:
        code = report(exc)
        return code, {"error": str(exc)}
    if not args.json:
        print("\n".join(_text(outcome, settings)))
    doc = {**outcome.plan.to_dict(), "written": outcome.written, "dry_run": outcome.dry_run}
    doc.update(attempts=outcome.attempts, warnings=[w.strip() for w in emergency_warning(outcome.plan, settings)])
    return exitcodes.OK, doc


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.keyring is not None and args.keyring not in cfg.keyrings:
        raise ConfigError([f"--keyring: {args.keyring!r} is not a configured keyring ({', '.join(cfg.keyrings)})"])
    if args.step == "status" and (args.dry_run or args.emergency):
        raise ConfigError(["status writes nothing: it takes neither --dry-run nor --emergency"])
    request = _request(args)
    names = list(cfg.keyrings) if args.all else [args.keyring]
    first_failure = exitcodes.OK
    documents: dict[str, dict[str, Any]] = {}
    for name in names:
        code, documents[name] = _one(args, cfg.keyrings[name].settings, request)
        first_failure = first_failure or code
    if args.json:
        emit_json({"keyrings": documents})
    if len(names) > 1 and first_failure:
        status(f"{exitcodes.PROG}: rotate: at least one keyring failed (see above); the others were rotated")
    return first_failure


COMMAND = Command("rotate", "rotate keys: add, promote, retire, rollback", add_arguments, run)
