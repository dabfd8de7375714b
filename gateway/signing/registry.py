"""Which schemes exist: ``scheme`` name (a route's config value) -> ``scheme.Scheme``, the
headers each one's signatures travel in, and which ones a sign route can emit.

Adding a scheme is one module that defines its settings type, its verifier and ``SCHEME``
(see ``gateway/signing/scheme.py``), plus one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gateway.signing import github, rfc9421, slack, standard_webhooks, stripe
from gateway.signing.scheme import Scheme, Verifier

SCHEMES: Mapping[str, Scheme[Any]] = MappingProxyType(
    {s.name: s for s in (rfc9421.SCHEME, standard_webhooks.SCHEME, github.SCHEME, stripe.SCHEME, slack.SCHEME)}
)

# The header fields (lower case) a scheme's signatures travel in: a verify route drops them
# before forwarding unless keep_signature_headers, and a sign route drops client copies of them.
SIGNATURE_HEADERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "rfc9421": frozenset({"signature", "signature-input"}),
        "standard-webhooks": standard_webhooks.HEADERS,
        "github": github.HEADERS,
        "stripe": stripe.HEADERS,
        "slack": slack.HEADERS,
    }
)

# Schemes whose signatures name their key: their replay entries are per key. The others' replay
# token (a message id, a delivery id) names the message whichever active key verified it, so a
# copy re-signed with -- or, after a rotation, matched by -- another key is still a replay.
NAMES_KEY = frozenset({"rfc9421"})

# Schemes a sign route can emit.
SIGN_SCHEMES = ("rfc9421", "standard-webhooks")


def verifier_for(name: str, settings: object) -> Verifier:
    """The verifier of scheme ``name`` built from its settings object.

    Raises KeyError for an unknown scheme and TypeError for settings of another scheme: config
    validation names both before a route is ever built, so either is a bug, not input.
    """
    return SCHEMES[name].verifier(settings)
