"""``sign``: the headers a request needs to pass a verify route, for a webhook sender or an
operator onboarding one. Also what ``verify`` shares with it: reading a keyring for the CLI
(from the config by name, or a keyring file), a body from a file or stdin, header arguments.

Invariants: secrets come only from keyring files or the configured source, never from the
command line; output is header lines (or ``--json``) naming key ids, never key material.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from multidict import CIMultiDict

from gateway import exitcodes
from gateway.cli.base import Command, emit_json, load_config
from gateway.errors import ConfigError
from gateway.keys.factory import read_keyring
from gateway.keys.formats import ENCODINGS
from gateway.keys.model import Key, Keyring
from gateway.keys.settings import FileSourceSettings, KeyringSettings
from gateway.signing import github, registry, rfc9421, slack, standard_webhooks, stripe
from gateway.signing.digest import content_digest
from gateway.signing.scheme import RequestView


def add_keyring_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--keyring", metavar="NAME", help="a keyring of the config (default: its only one)")
    which.add_argument("--keyring-file", metavar="PATH", type=Path, help="a JSON keyring file (no config needed)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="raw", help="with --keyring-file: how secrets read")


def load_keyring(args: argparse.Namespace) -> Keyring:
    if args.keyring_file is not None:
        source = FileSourceSettings(path=args.keyring_file)
        return read_keyring(KeyringSettings(name=args.keyring_file.name, source=source, encoding=args.encoding))
    cfg = load_config(args)
    name = args.keyring or (next(iter(cfg.keyrings)) if len(cfg.keyrings) == 1 else None)
    if name is None or name not in cfg.keyrings:
        known = ", ".join(sorted(cfg.keyrings))
        raise ConfigError([f"--keyring: name one of the configured keyrings ({known})"])
    return read_keyring(cfg.keyrings[name].settings)


def read_input(path: str | None) -> bytes:
    """A file's bytes, stdin's for ``-``, nothing for None: the bytes as they are, never decoded."""
    if path is None:
        return b""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None


def parse_header_args(values: list[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip():
            raise ConfigError([f"--header {value!r}: must read 'Name: value'"])
        headers.add(name.strip(), text.strip())
    return headers


def pick_key(keyring: Keyring, key_id: str | None) -> Key:
    if key_id is None:
        return keyring.signing_key
    key = keyring.get(key_id)
    if key is None:
        raise ConfigError([f"--key-id: no key {key_id!r} in keyring {keyring.name!r}"])
    return key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", help="e.g. POST")
    parser.add_argument("url", help="absolute URL the request goes to, e.g. https://hooks.example.com/in?a=1")
    parser.add_argument("--body", metavar="FILE", help="the body, from a file or - for stdin (default: none)")
    parser.add_argument("--header", "-H", action="append", default=[], metavar="'NAME: VALUE'", help="repeatable")
    parser.add_argument("--scheme", choices=tuple(registry.SCHEMES), default="rfc9421")
    add_keyring_arguments(parser)
    parser.add_argument("--key-id", help="sign with this key (default: the keyring's signing key)")
    parser.add_argument("--created", type=int, help="signing time, Unix seconds (default: now)")
    rfc = parser.add_argument_group("rfc9421")
    rfc.add_argument("--label", default="sig1")
    rfc.add_argument("--components", help="comma-separated covered components (default: the gateway's set)")
    rfc.add_argument("--nonce", help="the nonce parameter (default: none)")
    rfc.add_argument("--tag", default="", help="the tag parameter (default: none)")
    rfc.add_argument("--no-alg", action="store_true", help='omit alg="hmac-sha256" (as RFC 9421 B.2.5 does)')
    parser.add_argument("--message-id", help="standard-webhooks: webhook-id (default: a random msg_ id)")
    parser.add_argument("--json", action="store_true", help="print the headers as a JSON object")


def sign_headers(args: argparse.Namespace, key: Key, body: bytes, created: int) -> dict[str, str]:
    """The headers to add, in the order they are printed."""
    if args.scheme == "standard-webhooks":
        msg_id = args.message_id or "msg_" + secrets.token_urlsafe(16)
        return standard_webhooks.sign_headers([key], msg_id, created, body)
    if args.scheme == "github":
        return {github.SIGNATURE_HEADER: github.signature(key.material, body)}
    if args.scheme == "stripe":
        return {stripe.SIGNATURE_HEADER: f"t={created},v1={stripe.mac(stripe.mac_key(key), created, body).hex()}"}
    if args.scheme == "slack":
        return {
            slack.TIMESTAMP_HEADER: str(created),
            slack.SIGNATURE_HEADER: "v0=" + slack.mac(key.material, created, body).hex(),
        }
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError([f"URL {args.url!r}: must be an absolute http(s) URL"])
    headers = parse_header_args(args.header)
    try:
        components = rfc9421.parse_components(
            args.components.split(",") if args.components else rfc9421.DEFAULT_COMPONENTS
        )
    except rfc9421.ComponentError as exc:
        raise ConfigError([f"--components: {exc}"]) from None
    added: dict[str, str] = {}
    if any(c.identifier == '"content-digest"' for c in components) and "Content-Digest" not in headers:
        added["Content-Digest"] = headers["Content-Digest"] = content_digest(body)
    view = RequestView(
        method=args.method.upper(),
        authority=headers.get("Host", parts.netloc),
        path=parts.path or "/",
        query=parts.query if "?" in args.url else None,
        headers=headers,
        scheme=parts.scheme,
    )
    try:
        signed = rfc9421.sign(
            view,
            key,
            components,
            created=created,
            nonce=args.nonce,
            tag=args.tag or None,
            label=args.label,
            include_alg=not args.no_alg,
        )
    except rfc9421.ComponentError as exc:
        raise ConfigError([f"cannot sign this request: {exc}"]) from None
    return added | {"Signature-Input": signed.signature_input, "Signature": signed.signature}


def run(args: argparse.Namespace) -> int:
    body = read_input(args.body)
    key = pick_key(load_keyring(args), args.key_id)
    created = args.created if args.created is not None else int(time.time())
    headers = sign_headers(args, key, body, created)
    if args.json:
        emit_json({"scheme": args.scheme, "key_id": key.id, "headers": headers})
    else:
        for name, value in headers.items():
            print(f"{name}: {value}")
    return exitcodes.OK


COMMAND = Command("sign", "print the signature headers for a request (never a secret)", add_arguments, run)
