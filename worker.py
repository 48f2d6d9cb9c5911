"""The Temporal worker: runs EnrollmentWorkflow and its activities until SIGTERM/SIGINT."""

import asyncio
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.access import build_ops_activities
from activities.access_drift import ensure_access_drift_schedule
from activities.enrollment import EnrollmentActivities
from activities.reconcile import ensure_reconcile_schedule
from core.db import make_engine
from core.logging import configure_logging
from core.mail import Mailer
from core.metrics import start_worker_metrics
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings, get_settings
from core.temporal import connect
from core.tools.registry import build_adapters
from workflows import WORKFLOWS

log = logging.getLogger("onramp.worker")
MAX_CONCURRENT_ACTIVITIES = 64
# Each cached workflow holds its own sandboxed module copies: cap memory (default 1,000).
MAX_CACHED_WORKFLOWS = 300
# More than the SDK's 5: when many tools finish at once, workflow tasks (and the
# verify-session queries waiting behind them) are picked up sooner (bench/README.md).
WORKFLOW_TASK_POLLS = 16


def build_activities(settings: Settings) -> EnrollmentActivities:
    return EnrollmentActivities(
        settings,
        make_engine(settings.database_url, pre_ping=False),
        build_adapters(settings),
        Mailer(settings),
        StripeGateway(settings),
    )


def build_worker(
    client: Client, settings: Settings, executor: ThreadPoolExecutor, task_queue: str | None = None
) -> Worker:
    enrollment = build_activities(settings)
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=WORKFLOWS,
        activities=[*enrollment.all(), *build_ops_activities(client, settings, enrollment)],
        activity_executor=executor,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        max_concurrent_workflow_task_polls=WORKFLOW_TASK_POLLS,
        # SIGTERM (a deploy) lets running activities finish within this bound before they
        # are cancelled; compose's stop_grace_period is longer, so nothing is killed first.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
    )


async def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    settings.check_production()
    # Before the client: the SDK's metrics runtime must be the process default.
    start_worker_metrics(
        settings.metrics_host, settings.worker_metrics_port, settings.worker_sdk_metrics_port
    )
    client = await connect(settings)
    await ensure_reconcile_schedule(client, settings)
    await ensure_access_drift_schedule(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES) as executor:
        worker = build_worker(client, settings, executor)
        log.info("worker polling task queue %s", settings.temporal_task_queue)
        async with worker:
            await stop.wait()
    log.info("worker stopped")


def run() -> None:
    asyncio.run(main())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker has shut down and every log line is out. Skip interpreter finalization:
    # the SDK's Rust threads can touch Python while it is being torn down and abort the
    # process (SIGABRT, "PyGILState_Release ... finalizing", temporalio/sdk-python#300),
    # turning a clean stop into exit code -6.
    os._exit(0)


if __name__ == "__main__":
    run()
