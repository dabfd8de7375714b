"""``keys``: each keyring's keys with their state, age and expiry. Never a secret.

Invariant: listing reads and never writes: a missing file keyring is reported (exit 3), never
created, whatever ``create`` says (creating one is serve's start-up's job).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway import exitcodes
from gateway.cli.base import Command, emit_json, load_config, report
from gateway.clock import system_clock, to_rfc3339
from gateway.errors import KeyringError
from gateway.keys.factory import read_keyring
from gateway.keys.model import Key, Keyring
from gateway.keys.settings import KeyringSettings
from gateway.rotation.controller import next_step_line
from gateway.rotation.lifecycle import plan
from gateway.rotation.policy import RotationRefused
from gateway.rotation.settings import policy_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def span(seconds: float) -> str:
    """A duration for people: ``3d 4h``, ``5h 12m``, ``7m``, ``42s``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _stamp(value: float | None) -> str | None:
    return to_rfc3339(value) if value is not None else None


def key_row(key: Key, now: float) -> dict[str, Any]:
    return {
        "id": key.id,
        "state": key.state.value,
        "verifies_now": key.verifies_at(now),
        "created_at": _stamp(key.created_at),
        "promoted_at": _stamp(key.promoted_at),
        "expires_at": _stamp(key.expires_at),
        "age_seconds": None if key.created_at is None else round(max(0.0, now - key.created_at)),
        "expires_in_seconds": None if key.expires_at is None else round(key.expires_at - now),
    }


def keyring_row(keyring: Keyring, source: str, now: float) -> dict[str, Any]:
    return {
        "source": source,
        "format": keyring.format,
        "signing_key": keyring.signing_key_id,
        "keys": [key_row(k, now) for k in keyring.keys],
    }


def next_step(keyring: Keyring, settings: KeyringSettings, now: float) -> dict[str, Any]:
    """Which step ``rotate`` (no step) would take now, and when it next can: a dry plan, never written."""
    try:
        the_plan = plan(keyring, now, policy_for(settings))
    except RotationRefused as exc:  # advance refuses nothing today; say so rather than crash if it ever does
        return {"would": f"rotate would be refused ({exc.code.value})", "actions": [], "next_step_at": None}
    return {
        "would": next_step_line(keyring, the_plan),
        "actions": [a.kind.value for a in the_plan.actions],
        "next_step_at": _stamp(the_plan.next_step_at),
    }


def _text(name: str, ring: dict[str, Any]) -> list[str]:
    lines = [f"{name}  ({ring['format']}, signing with {ring['signing_key']}, {ring['source']})"]
    width = max(len("KEY"), *(len(k["id"]) for k in ring["keys"]))
    lines.append(f"  {'KEY':<{width}}  {'STATE':<8}  {'AGE':<7}  EXPIRES")
    for k in ring["keys"]:
        age = span(k["age_seconds"]) if k["age_seconds"] is not None else "-"
        if k["expires_at"] is None:
            expiry = "-"
        elif k["verifies_now"]:
            expiry = f"{k['expires_at']} (in {span(k['expires_in_seconds'])})"
        else:
            expiry = f"{k['expires_at']} (expired: no longer verifies)"
        lines.append(f"  {k['id']:<{width}}  {k['state']:<8}  {age:<7}  {expiry}")
    if "rotation" in ring:
        lines.append(f"  next: {ring['rotation']['would']}")
    return lines


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    now = system_clock()
    rings: dict[str, dict[str, Any]] = {}
    failed: dict[str, KeyringError] = {}
    for name, kc in cfg.keyrings.items():
        settings = kc.settings
        try:
            keyring = read_keyring(settings)
        except KeyringError as exc:
            failed[name] = exc
            continue
        rings[name] = keyring_row(keyring, settings.source.description, now)
        rings[name]["rotation"] = next_step(keyring, settings, now)
    if args.json:
        document: dict[str, Any] = {"keyrings": rings}
        if failed:
            document["errors"] = {name: str(exc) for name, exc in failed.items()}
        emit_json(document)
    else:
        for name, ring in rings.items():
            print("\n".join(_text(name, ring)))
    for error in failed.values():
        report(error)  # one line each, on stderr
    return exitcodes.KEYRING_ERROR if failed else exitcodes.OK


COMMAND = Command("keys", "list keyrings and key states (never secrets)", add_arguments, run)
