"""Declaring a setting once: its TOML key, default, type, bounds and documentation line live on
the dataclass field (``setting(...)``). The reader parses every declared field by its type, and
``docs`` renders the README's tables from the same declarations (a test keeps them equal).

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_KEY = "hmac_gateway_setting"
REQUIRED: Any = dataclasses.MISSING  # a setting with no default: the table must name it


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # the TOML key ("" means: the attribute's name)
    doc: str  # one documentation line (markdown), rendered into the README
    lo: float | None = None
    hi: float | None = None
    positive: bool = True  # numbers: > 0 (else >= lo)
    choices: tuple[str, ...] = ()
    shown_default: str | None = None  # how the README shows the default, when not the value itself
    required: bool = False


def setting(
    default: Any,
    doc: str,
    *,
    key: str = "",
    lo: float | None = None,
    hi: float | None = None,
    positive: bool = True,
    choices: tuple[str, ...] = (),
    shown_default: str | None = None,
    required: bool = False,
    repr: bool = True,
) -> Any:
    """A dataclass field that is a config setting."""
    info = Setting(key, doc, lo, hi, positive, choices, shown_default, required or default is REQUIRED)
    if default is REQUIRED:
        return dataclasses.field(repr=repr, metadata={_KEY: info})
    return dataclasses.field(default=default, repr=repr, metadata={_KEY: info})


def declared(cls: type) -> list[tuple[str, str, Any, Setting]]:
    """(attribute, annotation, default, setting) for every declared setting of ``cls``, in order."""
    out = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get(_KEY)
        if isinstance(info, Setting):
            out.append((f.name, str(f.type), f.default, info))
    return out


def key_of(attr: str, info: Setting) -> str:
    return info.key or attr


def toml_value(value: Any) -> str:
    """A default as TOML shows it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def markdown_table(cls: type, *, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> str:
    """The README table of ``cls``'s settings (``only``/``skip`` name TOML keys)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for attr, _, default, info in declared(cls):
        key = key_of(attr, info)
        if key in skip or (only is not None and key not in only):
            continue
        if info.shown_default is not None:
            shown = info.shown_default
        elif info.required:
            shown = "— (required)"
        elif default is None:
            shown = "unset"
        else:
            shown = f"`{toml_value(default)}`"
        rows.append(f"| `{key}` | {shown} | {info.doc} |")
    return "\n".join(rows)
