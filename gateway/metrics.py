"""The gateway's Prometheus metrics: every name, label and help text in one place.

The alerting rules and the dashboard in ``deploy/monitoring/`` are written against these names,
and a test checks that they refer to nothing else.

Invariants:
- label values are bounded: routes, listeners, keyrings and reasons come from config and code;
  a key id is a label only once it matched a key of the keyring (``key_label``), so junk key
  ids from senders collapse into one ``unknown`` value and cannot grow the series count;
- no label or value ever carries key material;
- under ``serve --workers N`` every worker writes its own values into the directory named by
  ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them (prometheus-client's multiprocess
  mode): counts are every worker's, never one random worker's. Gauges say how they combine.

Recording is off the request path's critical cost: prometheus-client spends 4-9 µs on one
labelled ``inc`` or ``observe`` (more in multiprocess mode), several per request, against a
5 % budget of a verified request's ~300 µs. A request therefore only bumps plain counters in
the process's ``Recorder`` (a dict increment, a ``bisect`` for histograms); ``flush`` moves
the deltas into prometheus-client once a second and before every scrape.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "hmac_gateway"
UNKNOWN_KEY = "unknown"

# Request latency as the client sees it, and upstream latency alone: 0.5 ms .. 30 s.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "requests",
    "Requests answered, by listener, route, outcome (forwarded, rejected, upstream_aborted, ...) and reason code.",
    ["listener", "route", "outcome", "reason"],
    namespace=NAMESPACE,
)
VERIFICATIONS = Counter(
    "verifications",
    "Verify-route signatures that verified, by route and the key id that matched.",
    ["route", "keyring", "key_id"],
    namespace=NAMESPACE,
)
VERIFICATION_FAILURES = Counter(
    "verification_failures",
    "Verify-route refusals by route and reason code (stale, unknown_key, signature_mismatch, ...).",
    ["route", "reason"],
    namespace=NAMESPACE,
)
SIGNATURES = Counter(
    "signatures",
    "Sign-route requests signed, by route and signing key id.",
    ["route", "keyring", "key_id"],
    namespace=NAMESPACE,
)
REQUEST_SECONDS = Histogram(
    "request_duration_seconds",
    "Time from the request's arrival to the end of its answer, by listener and route.",
    ["listener", "route"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "upstream_duration_seconds",
    "Time from sending to the upstream to its answer's head, by route.",
    ["route"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
KEYRING_AGE = Gauge(
    "keyring_age_seconds",
    "Seconds since the keyring last loaded (or was confirmed unchanged); worst worker.",
    ["keyring"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
KEYRING_STALE = Gauge(
    "keyring_stale",
    "1 while refreshes fail and the last good keyring is served, else 0; worst worker.",
    ["keyring"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
KEYRING_REFRESH_FAILURES = Gauge(
    "keyring_refresh_consecutive_failures",
    "Refreshes failed in a row since the last success; worst worker.",
    ["keyring"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
KEY_EXPIRY = Gauge(
    "key_expires_in_seconds",
    "Seconds until a retiring key stops verifying (negative once it has).",
    ["keyring", "key_id"],
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)
SIGNING_KEY_AGE = Gauge(
    "signing_key_age_seconds",
    "Seconds since the keyring's signing key was promoted (created, for flat maps: unknown is -1).",
    ["keyring"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
SOURCE_CALLS = Counter(
    "keyring_source_calls",
    "Keyring source reads (a file or AWS Secrets Manager) by result: ok, unchanged, error.",
    ["keyring", "source", "result"],
    namespace=NAMESPACE,
)
REPLAY_ENTRIES = Gauge(
    "replay_store_entries",
    "Entries held by the in-memory replay store (per process, summed).",
    [],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
REPLAY_REFUSALS = Counter(
    "replay_store_refusals",
    "Requests refused by the replay store: replayed, replay_store_full, replay_store_unavailable.",
    ["reason"],
    namespace=NAMESPACE,
)
WORKER_RESTARTS = Counter(
    "worker_restarts",
    "Workers of serve --workers N that died and were started again.",
    [],
    namespace=NAMESPACE,
)


class Recorder:
    """Per-process counts and observations, flushed into prometheus-client in batches.

    ``count`` and ``observe`` are all a request pays; ``flush`` (the ops endpoint calls it before
    rendering, and a background task every second) adds what accumulated since the last flush:
    counters by ``inc(n)``, histograms bucket by bucket. ``gauges`` are callbacks run at each
    flush, to set gauges whose value is a function of state (keyring age, expiries).
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        # per (histogram, labels): [count per bucket..., sum]
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}
        self._bounds: dict[Histogram, tuple[float, ...]] = {}
        self.gauges: list[Callable[[], None]] = []

    def count(self, metric: Counter, labels: tuple[str, ...], n: int = 1) -> None:
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + n

    def observe(self, metric: Histogram, labels: tuple[str, ...], value: float) -> None:
        bounds = self._bounds.get(metric)
        if bounds is None:
            bounds = self._bounds[metric] = tuple(metric._upper_bounds)  # includes +Inf
        slots = self._observed.get((metric, labels))
        if slots is None:
            slots = self._observed[(metric, labels)] = [0.0] * (len(bounds) + 1)
        slots[bisect.bisect_left(bounds, value)] += 1
        slots[-1] += value

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for (counter, labels), n in counts.items():
            (counter.labels(*labels) if labels else counter).inc(n)
        observed, self._observed = self._observed, {}
        for (histogram, labels), slots in observed.items():
            child = histogram.labels(*labels) if labels else histogram
            # prometheus-client's own Histogram.observe does exactly this per value (its bucket
            # values and sum); tests compare our exposition with observe()'s for the same values.
            for index, hits in enumerate(slots[:-1]):
                if hits:
                    child._buckets[index].inc(hits)
            child._sum.inc(slots[-1])
        for update in self.gauges:
            update()


def key_label(key_id: str, known: bool) -> str:
    """A key id as a label value: only ids of keys the keyring holds, else ``unknown``."""
    return key_id if known else UNKNOWN_KEY


ALL = (
    REQUESTS,
    VERIFICATIONS,
    VERIFICATION_FAILURES,
    SIGNATURES,
    REQUEST_SECONDS,
    UPSTREAM_SECONDS,
    KEYRING_AGE,
    KEYRING_STALE,
    KEYRING_REFRESH_FAILURES,
    KEY_EXPIRY,
    SIGNING_KEY_AGE,
    SOURCE_CALLS,
    REPLAY_ENTRIES,
    REPLAY_REFUSALS,
    WORKER_RESTARTS,
)


def exposed_names() -> set[str]:
    """Every sample name /metrics can expose for our metrics (``_total``, ``_bucket``, ...)."""
    names: set[str] = set()
    for metric in ALL:
        for family in metric.describe():
            names.add(family.name)
            if family.type == "counter":
                names.update({family.name + "_total", family.name + "_created"})
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_count", "_sum", "_created"))
    return names
