"""Prometheus metrics, served on their own listener (``metrics_port``), not
the public port, so they are never exposed to the internet by accident.

Labels are small closed sets (route class, status code, reason, operation) so
no client can blow up the number of series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "sidecar_requests_total",
    "Requests answered, by route class and status.",
    ["route", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "sidecar_request_duration_seconds",
    "Time to answer a request, by route class and status.",
    ["route", "status"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TOKENS = Counter(
    "sidecar_tokens_total",
    "Token events: issued, refreshed, revoked, or refused with a reason, by client family.",
    ["event", "reason", "client_family"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "sidecar_rate_limited_total",
    "Requests answered 429, by the limit that fired and client family.",
    ["limit", "client_family"],
    registry=REGISTRY,
)
AUTHORIZATIONS = Counter(
    "sidecar_authorizations_total",
    "Authorization requests by outcome (approved, remembered, denied, login, refused) "
    "and client family.",
    ["outcome", "client_family"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "sidecar_upstream_errors_total",
    "Upstream failures: unreachable or timeout.",
    ["kind"],
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "sidecar_upstream_duration_seconds",
    "Time until the upstream's response headers.",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STORE_SECONDS = Histogram(
    "sidecar_store_duration_seconds",
    "Time of one store operation.",
    ["op"],
    registry=REGISTRY,
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 2.5),
)
STORE_ERRORS = Counter(
    "sidecar_store_errors_total",
    "Store operations that failed (store unavailable).",
    ["op"],
    registry=REGISTRY,
)
# With several workers each writes its own value; the supervisor shows the
# highest (they agree once a key reload has reached them all).
SIGNING_KEYS = Gauge(
    "sidecar_signing_keys",
    "Keys published in the JWKS.",
    registry=REGISTRY,
    multiprocess_mode="max",
)
SIGNING_KEY_AGE = Gauge(
    "sidecar_signing_key_age_seconds",
    "Age of the key that signs now (0 when the key has no creation time).",
    ["kid"],
    registry=REGISTRY,
    multiprocess_mode="max",
)


def token_event(event: str, reason: str = "", family: str = "") -> None:
    TOKENS.labels(event=event, reason=reason, client_family=family).inc()


def authorization_outcome(outcome: str, family: str = "") -> None:
    AUTHORIZATIONS.labels(outcome=outcome, client_family=family).inc()


def metrics_listener_error(host: str, port: int, exc: OSError) -> str:
    """Two sidecars on one host meet here first: say which listener and which
    key to change, not just the errno."""
    return (
        f"the metrics listener cannot listen on {host}:{port} ({exc.strerror}): "
        "set metrics_port (SIDECAR_METRICS_PORT) to a free port, or 0 to turn it off"
    )


def serve_metrics(host: str, port: int) -> Any:
    """Start the metrics listener in a background thread; returns the server."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
