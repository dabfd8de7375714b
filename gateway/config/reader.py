"""Reading TOML tables: typed access with every problem recorded under its location, unknown
keys refused, environment overrides applied, and declared settings read by their type.

Environment overrides: ``HMAC_GATEWAY__<SECTION>__<KEY>=<value>``, ``__`` between levels,
case-insensitive, ``_`` matching ``-`` in names, list items by index
(``HMAC_GATEWAY__ROUTES__0__UPSTREAM``). Values are read as TOML values when they parse as one
(``8080``, ``true``, ``["a"]``) and as plain strings otherwise.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.declare import declared, key_of

ENV_PREFIX = "HMAC_GATEWAY__"


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    applied = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        parts = variable[len(ENV_PREFIX) :].split("__")
        node: Any = raw
        ok = True
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"{variable}: {part!r} is not an index of a list of {len(node)}")
                    ok = False
                    break
                if last:
                    problems.append(f"{variable}: cannot replace a whole list item")
                    ok = False
                    break
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                problems.append(f"{variable}: {part!r} does not name a table")
                ok = False
                break
            existing = next((k for k in node if _norm(k) == _norm(part)), None)
            if last:
                node[existing or _norm(part)] = _parse_env_value(environ[variable])
            elif existing is None:
                problems.append(f"{variable}: no [{part.lower()}] section in the config file")
                ok = False
                break
            else:
                node = node[existing]
        if ok:
            applied.append(variable)
    return tuple(applied)


class Reader:
    """Typed access to one TOML table, recording problems under a location prefix."""

    def __init__(self, table: Any, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            table = {}
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds:
            self.problems.append(f"{self.where}.{key}: must be {kind_name}, got {value!r}")
            return default
        if not isinstance(value, kinds):
            self.problems.append(f"{self.where}.{key}: must be {kind_name}, got {value!r}")
            return default
        return value

    def text(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, (str,), "a string")

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, default, (bool,), "true or false"))

    def integer(self, key: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        value = int(self._get(key, default, (int,), "an integer"))
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.problems.append(f"{self.where}.{key}: must be {bound}, got {value}")
            return default
        return value

    def number(self, key: str, default: float, lo: float = 0.0, positive: bool = True) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if value < lo or (positive and value <= 0):
            self.problems.append(f"{self.where}.{key}: must be {'> 0' if positive else f'>= {lo}'}, got {value}")
            return default
        return value

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list(default), (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            self.problems.append(f"{self.where}.{key}: must be a list of strings")
            return default
        return tuple(value)

    def finish(self) -> None:
        for key in sorted(set(self.table) - self.used):
            self.problems.append(f"{self.where}: unknown key {key!r}")


def read_declared(cls: type, reader: Reader, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """{attribute: value} for every setting ``cls`` declares (but ``skip``, attribute names),
    read by its type with its default and bounds; problems are recorded on ``reader``."""
    values: dict[str, Any] = {}
    for attr, kind, declared_default, info in declared(cls):
        if attr in skip:
            continue
        key = key_of(attr, info)
        # required: absent reads as empty, and the caller says what is missing
        default: Any = "" if declared_default is dataclasses.MISSING else declared_default
        if kind == "bool":
            value: Any = reader.flag(key, default)
        elif kind == "int":
            lo = 0 if info.lo is None else int(info.lo)
            value = reader.integer(key, default, lo=lo, hi=None if info.hi is None else int(info.hi))
        elif kind == "float":
            value = reader.number(key, default, lo=info.lo or 0.0, positive=info.positive)
        elif kind == "float | None":
            value = reader.number(key, 0.0, lo=info.lo or 0.0, positive=info.positive) if key in reader.table else None
        elif kind == "tuple[str, ...]":
            value = reader.str_list(key, default)
        elif kind in ("Path", "Path | None"):
            text = reader.text(key, None)
            value = default if text is None else Path(text)
        else:  # str, str | None
            value = reader.text(key, default)
            if info.choices and value not in info.choices:
                shown = ", ".join(info.choices)
                reader.problems.append(f"{reader.where}.{key}: must be one of {shown}, got {value!r}")
                value = default
        values[attr] = value
    return values
