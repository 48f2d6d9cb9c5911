"""Fixtures of the ops tests; their stack and helpers are in `tests/utils/ops.py`."""

import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio
import sqlalchemy as sa
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.access import build_ops_activities
from activities.enrollment import EnrollmentActivities
from api.main import create_app
from core.db import make_engine
from core.mail import Mailer
from core.payments.stripe_gateway import StripeGateway
from core.tools.registry import build_adapters
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.helpers import free_port
from tests.utils.ops import (
    Ops,
    SwitchableAdapter,
    ToolSwitch,
)
from tests.utils.stack import WEBHOOK_SECRET, make_settings
from workflows import WORKFLOWS


@pytest.fixture(scope="session")
def tool_switch() -> ToolSwitch:
    return ToolSwitch()


@pytest_asyncio.fixture(scope="session")
async def ops_stack(
    database_url: str,
    engine: sa.Engine,
    temporal: WorkflowEnvironment,
    mail: MailCatcher,
    tool_switch: ToolSwitch,
) -> AsyncIterator[Ops]:
    sandbox_port = free_port()
    settings = make_settings(
        database_url,
        temporal.client.service_client.config.target_host,
        mail,
        stripe_api_base=f"http://127.0.0.1:{sandbox_port}",
        temporal_task_queue=f"ops-{secrets.token_hex(4)}",
        auto_refund_duplicates=True,
        support_email="support@staff.example.com",
        # The Schedule ticks on the clock; a daily tick keeps it out of the tests' way.
        reconcile_interval_minutes=24 * 60,
        access_drift_interval_minutes=24 * 60,
        # Production's: each enrollment's run stays open, the owner of its later events.
        enrollment_owner_days=120,
    )
    sandbox_app = create_sandbox(
        webhook_url=f"{settings.public_base_url}{WEBHOOK_PATH}",
        webhook_secret=WEBHOOK_SECRET,
        public_url=f"http://127.0.0.1:{sandbox_port}",
        retry_delays=(0.2, 0.5, 1, 2),
    )
    worker_engine = make_engine(database_url)
    adapters = {
        tool: SwitchableAdapter(adapter, tool_switch)
        for tool, adapter in build_adapters(settings).items()
    }
    gateway = StripeGateway(settings)
    enrollment = EnrollmentActivities(settings, worker_engine, adapters, Mailer(settings), gateway)
    client = temporal.client
    with (
        BackgroundServer(sandbox_app, port=sandbox_port) as sandbox,
        BackgroundServer(create_app(settings), port=settings.port) as api,
        ThreadPoolExecutor(max_workers=32) as executor,
    ):
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=WORKFLOWS,
            activities=[*enrollment.all(), *build_ops_activities(client, settings, enrollment)],
            activity_executor=executor,
        )
        async with worker:
            yield Ops(settings, api.url, sandbox.url, client, engine, mail, tool_switch, gateway)
    worker_engine.dispose()


@pytest.fixture
def ops(ops_stack: Ops, clean_db: sa.Engine) -> Iterator[Ops]:
    """The operations stack with empty tables, an empty mailbox and every tool working."""
    ops_stack.mail.clear()
    ops_stack.switch.broken.clear()
    ops_stack.switch.unreachable.clear()
    ops_stack.switch.deprovisioned.clear()
    yield ops_stack
    ops_stack.switch.broken.clear()
    ops_stack.switch.unreachable.clear()
