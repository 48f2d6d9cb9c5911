"""Numbers: the API's /metrics counts checkouts, webhooks, payments, enrollments and
durations; the worker, in its own process, serves its series and the Temporal SDK's on
its own ports."""

import asyncio
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from core.urls import WEBHOOK_PATH
from sandbox.server import BackgroundServer
from tests.utils.helpers import ROOT, free_port
from tests.utils.ops import Ops
from workflows.access_drift import SCHEDULE_ID as DRIFT_SCHEDULE_ID
from workflows.reconcile import SCHEDULE_ID


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def scrape(ops: Ops) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with ops.http() as http:
        r = await http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return samples(r.text)


async def test_api_metrics_count_an_enrollment(ops: Ops) -> None:
    before = await scrape(ops)
    paid = await ops.buy("ada@example.com")
    await ops.wait_status(paid.session_id, "READY")
    after = await scrape(ops)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("onramp_checkouts_created_total", track="DP") == 1
    assert grew("onramp_payments_completed_total", track="DP") == 1
    assert grew("onramp_enrollments_completed_total", track="DP") == 1
    assert (
        grew("onramp_webhook_events_total", type="checkout.session.completed", outcome="started")
        == 1
    )
    assert (
        grew("onramp_webhook_events_total", type="payment_intent.succeeded", outcome="started")
        + grew(
            "onramp_webhook_events_total",
            type="payment_intent.succeeded",
            outcome="already_started",
        )
        == 1
    )
    for tool in ("postgres", "superset", "prefect", "jupyter"):
        assert grew("onramp_tool_provision_seconds_count", tool=tool) == 1
    assert grew("onramp_payment_to_ready_seconds_count", track="DP") == 1
    # Every request is timed by its route's template, never by its raw path.
    checkout = {"method": "POST", "route": "/api/payments/create-anonymous-checkout/"}
    assert grew("onramp_http_request_seconds_count", **checkout, status="200") == 1
    webhook = {"method": "POST", "route": WEBHOOK_PATH, "status": "200"}
    assert grew("onramp_http_request_seconds_count", **webhook) >= 2
    assert not any(
        name.startswith("onramp_http_request_seconds") and "cs_" in dict(labels).get("route", "")
        for name, labels in after
    )

    # A tool out of retries is counted as a failed enrollment.
    ops.switch.broken.add("superset")
    stuck = await ops.buy("bob@example.com")
    await ops.wait_status(stuck.session_id, "NEEDS_ATTENTION")
    last = await scrape(ops)
    # Leave nothing running into the next test's empty tables.
    await ops.client.get_workflow_handle(f"enrollment-{stuck.session_id}").terminate("test done")
    assert (
        value(last, "onramp_enrollments_failed_total", track="DP", reason="tool")
        - value(after, "onramp_enrollments_failed_total", track="DP", reason="tool")
        == 1
    )


async def test_worker_process_counts_an_enrollment_on_its_own_endpoints(
    ops: Ops, tmp_path: Path
) -> None:
    """worker.py in its own process, on its own task queue, fed by an API that enqueues
    there: the enrollment's tool and outcome series grow on the worker's endpoint, and not
    in this test process (which runs the other worker and the APIs)."""
    queue = f"boot-{secrets.token_hex(4)}"
    ours, sdk = free_port(), free_port()
    env = ops.cli_env(
        TEMPORAL_TASK_QUEUE=queue,
        METRICS_HOST="127.0.0.1",
        WORKER_METRICS_PORT=str(ours),
        WORKER_SDK_METRICS_PORT=str(sdk),
        RECONCILE_INTERVAL_MINUTES="7",
    )
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "worker.py", cwd=ROOT, env=env, stderr=stderr
        )
    settings = ops.settings.model_copy(update={"temporal_task_queue": queue})
    try:
        texts = await scrape_worker(proc, log.read_text, ours, sdk)
        assert "onramp_webhook_events" in texts[ours]
        assert "temporal_" in texts[sdk]
        # The boot also made sure the reconcile Schedule exists, with these settings.
        desc = await ops.client.get_schedule_handle(SCHEDULE_ID).describe()
        assert desc.schedule.spec.intervals[0].every.total_seconds() == 7 * 60
        # And the access-drift Schedule, on its own interval.
        drift = await ops.client.get_schedule_handle(DRIFT_SCHEDULE_ID).describe()
        every = ops.settings.access_drift_interval_minutes
        assert drift.schedule.spec.intervals[0].every.total_seconds() == every * 60

        here_before = await scrape(ops)
        with BackgroundServer(create_app(settings), port=free_port()) as api:
            async with ops.sandbox() as sb:
                r = await sb.post(
                    "/_sandbox/webhook_url", json={"url": f"{api.url}/api/payments/webhook/"}
                )
                assert r.status_code == 200, r.text
            try:
                async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
                    r = await http.post(
                        "/api/payments/create-anonymous-checkout/",
                        json={"email": "own@example.com", "name": "Own Worker", "track": "DP"},
                    )
                    assert r.status_code == 200, r.text
                    session_id = r.json()["sessionId"]
                async with ops.sandbox() as sb:
                    r = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
                    assert r.status_code == 200, r.text
                await ops.wait_status(session_id, "READY")
            finally:
                async with ops.sandbox() as sb:
                    await sb.post(
                        "/_sandbox/webhook_url",
                        json={"url": f"{ops.api_url}/api/payments/webhook/"},
                    )
        desc = await ops.client.get_workflow_handle(f"enrollment-{session_id}").describe()
        assert desc.task_queue == queue
        worker_after = samples((await scrape_worker(proc, log.read_text, ours, sdk))[ours])
        here_after = await scrape(ops)
        for tool in ("postgres", "superset", "prefect", "jupyter"):
            name = "onramp_tool_provision_seconds_count"
            assert value(worker_after, name, tool=tool) == 1, tool
            assert value(here_after, name, tool=tool) == value(here_before, name, tool=tool)
        assert value(worker_after, "onramp_enrollments_completed_total", track="DP") == 1
        assert value(worker_after, "onramp_payment_to_ready_seconds_count", track="DP") == 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
            await ops.client.get_schedule_handle(SCHEDULE_ID).delete()
            await ops.client.get_schedule_handle(DRIFT_SCHEDULE_ID).delete()
    assert code == 0, log.read_text()


async def scrape_worker(
    proc: asyncio.subprocess.Process, log: Callable[[], str], ours: int, sdk: int
) -> dict[int, str]:
    """Both of the worker's endpoints, waiting for them to answer (the SDK's once it has
    Temporal series)."""
    texts: dict[int, str] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(150):
            assert proc.returncode is None, log()
            for port in (ours, sdk):
                try:
                    r = await http.get(f"http://127.0.0.1:{port}/metrics")
                except httpx.TransportError:
                    continue
                if port == ours or "temporal_" in r.text:
                    texts[port] = r.text
            if len(texts) == 2:
                return texts
            await asyncio.sleep(0.2)
    raise AssertionError(f"the worker's metrics endpoints did not answer\n{log()}")
