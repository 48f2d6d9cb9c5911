"""Session-wide real services for the tests: Postgres, Temporal dev server, Stripe sandbox,
SMTP catcher, the API over HTTP and an in-process worker. Each test starts from empty tables."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio
import sqlalchemy as sa
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from core.db import make_engine
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.helpers import (
    binary,
    create_database,
    drop_database,
    free_port,
    migrate,
    sqlalchemy_url,
)
from tests.utils.stack import (
    SEARCH_ATTRIBUTE_KEYS,
    WEBHOOK_SECRET,
    Stack,
    empty_tables,
    make_settings,
)
from worker import build_worker


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = create_database()
    url = sqlalchemy_url(name)
    migrate(url)
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def clean_db(engine: sa.Engine) -> sa.Engine:
    empty_tables(engine)
    return engine


@pytest.fixture(scope="session")
def mail() -> Iterator[MailCatcher]:
    catcher = MailCatcher(host="127.0.0.1", smtp_port=free_port())
    catcher.start()
    yield catcher
    catcher.stop()


@pytest_asyncio.fixture(scope="session")
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def stack(
    database_url: str, engine: sa.Engine, temporal: WorkflowEnvironment, mail: MailCatcher
) -> AsyncIterator[Stack]:
    sandbox_port = free_port()
    settings = make_settings(
        database_url,
        temporal.client.service_client.config.target_host,
        mail,
        stripe_api_base=f"http://127.0.0.1:{sandbox_port}",
    )
    sandbox_app = create_sandbox(
        webhook_url=f"{settings.public_base_url}{WEBHOOK_PATH}",
        webhook_secret=WEBHOOK_SECRET,
        public_url=f"http://127.0.0.1:{sandbox_port}",
        retry_delays=(0.2, 0.5, 1, 2),
    )
    with (
        BackgroundServer(sandbox_app, port=sandbox_port) as sandbox,
        # As deployed: the app, not uvicorn, decides whom X-Forwarded-For is believed from.
        BackgroundServer(create_app(settings), port=settings.port, proxy_headers=False) as api,
        ThreadPoolExecutor(max_workers=64) as executor,
    ):
        worker = build_worker(temporal.client, settings, executor)
        async with worker:
            yield Stack(settings, api.url, sandbox.url, temporal.client, engine, mail)


@pytest.fixture
def fresh(stack: Stack, clean_db: sa.Engine) -> Stack:
    """The stack with empty tables and an empty mailbox."""
    stack.mail.clear()
    return stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every async test shares the session loop that owns the Temporal fixtures.
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"))
