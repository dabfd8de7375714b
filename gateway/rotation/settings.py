"""From a keyring's settings to its rotation ``Policy``: pure, so configuration can validate the
rules at load (``check-config``) without importing any source or network code."""

from __future__ import annotations

from gateway.keys.settings import KeyringSettings
from gateway.rotation.policy import Policy, propagation_delay_for


def policy_for(settings: KeyringSettings) -> Policy:
    """The keyring's rotation rules; raises ConfigError naming each bad setting. With no
    ``propagation_delay_seconds`` the delay is derived from the refresh interval and jitter."""
    rotation, refresh = settings.rotation, settings.refresh
    delay = rotation.propagation_delay
    if delay is None:
        delay = propagation_delay_for(refresh.interval, refresh.jitter)
    return Policy(
        propagation_delay=delay,
        overlap=rotation.overlap,
        rotation_period=rotation.rotation_period or None,
        emergency_grace=rotation.emergency_grace,
        clock_skew=rotation.clock_skew,
        encoding=settings.encoding,
    )
