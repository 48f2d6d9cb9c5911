"""Prometheus metrics of the API and the worker, and the worker's two metrics endpoints.

Metric objects live here so the API (`/metrics`) and the worker (its own port) count the
same series. Label values are bounded: tracks, tools, Stripe event types and outcomes.
"""

import logging
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

CHECKOUTS_CREATED = Counter(
    "onramp_checkouts_created", "Stripe Checkout Sessions created by the API", ["track"]
)
PAYMENTS_COMPLETED = Counter(
    "onramp_payments_completed",
    "Payments confirmed (counted once per enrollment, whatever delivered them)",
    ["track"],
)
ENROLLMENTS_COMPLETED = Counter(
    "onramp_enrollments_completed", "Enrollments that reached READY", ["track"]
)
ENROLLMENTS_FAILED = Counter(
    "onramp_enrollments_failed",
    "Enrollments that needed a person (tool failure, duplicate purchase) or were withdrawn",
    ["track", "reason"],
)
TOOL_PROVISION_SECONDS = Histogram(
    "onramp_tool_provision_seconds",
    "Duration of one successful provisioning attempt, per tool",
    ["tool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
PAYMENT_TO_READY_SECONDS = Histogram(
    "onramp_payment_to_ready_seconds",
    "Time from payment confirmed to enrollment READY",
    ["track"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 14400),
)
WEBHOOK_EVENTS = Counter(
    "onramp_webhook_events",
    "Stripe webhook events handled, by type and outcome",
    ["type", "outcome"],
)
ACCESS_CHANGES = Counter(
    "onramp_access_changes",
    "Access revoked or reinstated after refunds, disputes or support",
    ["action", "cause"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "onramp_http_request_seconds",
    "API requests: time from the request's arrival to its last response byte, server side",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PROGRESS_STREAMS = Gauge(
    "onramp_progress_streams", "Open progress streams and long-polls of this API process"
)
PROGRESS_READS = Counter(
    "onramp_progress_reads",
    "Enrollment reads made by the progress hub (one per change, whatever the watchers)",
)
ACCESS_DRIFT = Counter(
    "onramp_access_drift",
    "Differences between what a tool holds and the ledger, by tool and what was done "
    "(deprovisioned, provisioned, reported, deferred; unlisted: the tool could not be listed)",
    ["tool", "action"],
)
RECONCILED_ENROLLMENTS = Counter(
    "onramp_reconciled_enrollments",
    "Paid Checkout Sessions whose enrollment reconciliation had to start",
)


def seconds_since(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return max((datetime.now(UTC) - aware).total_seconds(), 0.0)


def observe_ready(track: str, paid_at: datetime | None) -> None:
    """One enrollment reached READY: count it and how long it took since payment."""
    ENROLLMENTS_COMPLETED.labels(track).inc()
    if paid_at is not None:
        PAYMENT_TO_READY_SECONDS.labels(track).observe(seconds_since(paid_at))


def start_worker_metrics(host: str, port: int, sdk_port: int) -> None:
    """Serve our metrics with prometheus_client and the Temporal SDK's from its runtime.

    Must run before any Temporal client is created: the SDK's runtime becomes the default
    one, so every client and worker in the process reports through it. Port 0 disables one.
    """
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    if sdk_port:
        runtime = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{sdk_port}"))
        )
        Runtime.set_default(runtime, error_if_already_set=True)
    if port:
        start_http_server(port, addr=host)
    log.info(
        "worker metrics on %s:%s (onramp) and %s:%s (temporal sdk)", host, port, host, sdk_port
    )


def count_payment(track: str, checkout_session_id: str) -> None:
    """A confirmed payment; grants (`grant-...`, no money) are not payments."""
    if not checkout_session_id.startswith("grant-"):
        PAYMENTS_COMPLETED.labels(track).inc()


def count_failure(track: str, error_type: str) -> None:
    """An enrollment handed to support: a duplicate purchase, or a tool out of retries."""
    ENROLLMENTS_FAILED.labels(
        track, "duplicate" if error_type == "DuplicatePurchase" else "tool"
    ).inc()
