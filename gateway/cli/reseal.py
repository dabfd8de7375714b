"""``reseal``: re-seal a sealed file keyring under a new master key.

Both master keys come from environment variables the keyring's config names: ``seal_key_env``
is the *new* key's variable, ``previous_seal_key_env`` the old one's (gateways accept either
while the change is under way). Neither key is ever an argument.

Invariants:
- the pre-flight opens the file with the old key (or finds it already sealed under the new one,
  and then writes nothing: running twice is safe) and parses the keyring before anything is
  written; ``--dry-run`` stops there and says what it would do;
- the write is ``FileSource.write``'s: under the file lock, the keyring re-read and compared
  (compare-and-swap on the plaintext's version, so a rotation between the pre-flight and the
  write is a conflict, never lost), a temporary file fsynced and renamed over the keyring; the
  keys inside are unchanged byte for byte, so gateways see the same version;
- afterwards the file is opened again with the new key alone: success is claimed only if that works;
- output names the file, the variables and key ids; never a key.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway import exitcodes
from gateway.cli.base import Command, emit_json, load_config, status
from gateway.errors import ConfigError, SealError
from gateway.keys import sealing
from gateway.keys.formats import parse_keyring
from gateway.keys.settings import FileSourceSettings, KeyringSettings
from gateway.keys.sources import FileSource, content_version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyring", required=True, help="the sealed file keyring to re-seal")
    parser.add_argument("--dry-run", action="store_true", help="open the file with the old key, report, write nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _file_settings(settings: KeyringSettings) -> tuple[FileSourceSettings, str, str]:
    source, where = settings.source, f"[keyrings.{settings.name}]"
    if not isinstance(source, FileSourceSettings):
        raise ConfigError([f"{where}: reseal applies to file keyrings (Secrets Manager encrypts with KMS)"])
    if not source.seal_key_env:
        raise ConfigError([f"{where}.seal_key_env: not set; the keyring is not sealed"])
    if not source.previous_seal_key_env:
        raise ConfigError(
            [
                f"{where}.previous_seal_key_env: not set; set seal_key_env to the new key's variable and "
                "previous_seal_key_env to the old key's (runbooks/master-key-rotation.md)"
            ]
        )
    if source.previous_seal_key_env == source.seal_key_env:
        raise ConfigError([f"{where}: seal_key_env and previous_seal_key_env name the same variable"])
    return source, source.seal_key_env, source.previous_seal_key_env


def reseal(settings: KeyringSettings, *, dry_run: bool) -> dict[str, Any]:
    """Re-seal the keyring's file under ``seal_key_env``'s key; returns what was (or would be) done."""
    source, new_env, old_env = _file_settings(settings)
    new_key = sealing.master_key_from_env(new_env)  # both checked before the file is touched
    old_key = sealing.master_key_from_env(old_env)
    if new_key == old_key:
        raise SealError(f"${new_env} and ${old_env} hold the same master key: generate a new one first")
    files = FileSource(
        settings.name,
        source.path,
        seal_key_env=new_env,
        previous_seal_key_env=old_env,
        check_permissions=source.check_permissions,
    )
    document, opened_with = files.load_sealed()
    keyring = parse_keyring(settings.name, document.data, encoding=settings.encoding, version_id=document.version_id)
    result: dict[str, Any] = {
        "keyring": settings.name,
        "file": str(source.path),
        "from": f"${old_env}",
        "to": f"${new_env}",
        "keys": [k.id for k in keyring.keys],
        "version": document.version_id,
        "dry_run": dry_run,
    }
    if opened_with == new_env:
        return {**result, "action": "none", "reason": f"already sealed under ${new_env}"}
    if dry_run:
        return {**result, "action": "would_reseal"}
    files.write(document.data, expected_version=document.version_id)
    # Trust only what the new key alone opens: the file as gateways without the old key will read it.
    check = sealing.unseal(source.path.read_bytes(), new_key, where=files.description)
    if content_version(check) != document.version_id:
        raise SealError(f"{files.description}: the re-sealed file does not hold the keyring that was read")
    return {**result, "action": "resealed"}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.keyring not in cfg.keyrings:
        raise ConfigError([f"--keyring: {args.keyring!r} is not a configured keyring"])
    result = reseal(cfg.keyrings[args.keyring].settings, dry_run=args.dry_run)
    if args.json:
        emit_json(result)
        return exitcodes.OK
    what = {
        "none": f"nothing to do: {result.get('reason')}",
        "would_reseal": "would re-seal it (dry run: nothing written)",
        "resealed": "re-sealed",
    }[result["action"]]
    print(
        f"keyring {result['keyring']!r} ({result['file']}, {len(result['keys'])} keys, version {result['version']}): "
        f"{what}; from {result['from']} to {result['to']}"
    )
    if result["action"] == "resealed":
        status(f"next: once every gateway runs with {result['to']}, remove previous_seal_key_env and {result['from']}")
    return exitcodes.OK


COMMAND = Command("reseal", "re-seal a file keyring under a new master key", add_arguments, run)
