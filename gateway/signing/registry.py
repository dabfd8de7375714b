"""Which verify schemes exist: ``scheme`` name (a route's config value) -> ``scheme.Scheme``.

Adding a scheme is one module that defines its settings type, its verifier and ``SCHEME``
(see ``gateway/signing/scheme.py``), plus one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gateway.signing import rfc9421
from gateway.signing.scheme import Scheme, Verifier

SCHEMES: Mapping[str, Scheme[Any]] = MappingProxyType({s.name: s for s in (rfc9421.SCHEME,)})


def verifier_for(name: str, settings: object) -> Verifier:
    """The verifier of scheme ``name`` built from its settings object.

    Raises KeyError for an unknown scheme and TypeError for settings of another scheme: config
    validation names both before a route is ever built, so either is a bug, not input.
    """
    return SCHEMES[name].verifier(settings)
