"""The README's configuration tables, rendered from the settings' declarations.

``python -m gateway.config.docs README.md`` rewrites every block between
``<!-- settings:NAME -->`` and ``<!-- /settings -->``; a test fails when the README differs
from what the declarations say, so a setting's documentation line lives in one place.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from gateway.config.declare import markdown_table
from gateway.config.keyring_model import AWS_KEYS, FILE_KEYS, ROTATION_KEYS, KeyringConfig
from gateway.config.model import EchoConfig, GatewayConfig, ListenerConfig
from gateway.config.route_model import RouteConfig

_BLOCK = re.compile(r"(<!-- settings:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(\n<!-- /settings -->)", re.S)


def tables() -> dict[str, str]:
    return {
        "gateway": markdown_table(GatewayConfig),
        "keyrings": markdown_table(KeyringConfig, skip=FILE_KEYS + AWS_KEYS + ROTATION_KEYS),
        "keyrings-rotation": markdown_table(KeyringConfig, only=ROTATION_KEYS),
        "keyrings-file": markdown_table(KeyringConfig, only=FILE_KEYS),
        "keyrings-aws": markdown_table(KeyringConfig, only=AWS_KEYS),
        "listeners": markdown_table(ListenerConfig),
        "routes": markdown_table(RouteConfig),
        "echo": markdown_table(EchoConfig),
    }


def render(readme: str) -> str:
    """``readme`` with every settings block replaced by its rendered table."""
    rendered = tables()

    def replace(match: re.Match[str]) -> str:
        return match[1] + rendered[match["name"]] + match[4]

    return _BLOCK.sub(replace, readme)


def blocks(readme: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in _BLOCK.finditer(readme)}


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))
