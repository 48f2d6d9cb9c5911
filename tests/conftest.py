"""Session-wide real services for the tests: Postgres, Temporal dev server, Stripe sandbox,
SMTP catcher, the API over HTTP and an in-process worker. Each test starts from empty tables."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from core.contracts import SA_EMAIL, SA_FAILED_TOOL, SA_NEEDS_ATTENTION, SA_STATUS, SA_TRACK
from core.db import make_engine
from core.settings import Settings
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.support import (
    binary,
    create_database,
    drop_database,
    free_port,
    migrate,
    sell,
    sqlalchemy_url,
)
from worker import build_worker

WEBHOOK_SECRET = "whsec_test_" + uuid.uuid4().hex
SEARCH_ATTRIBUTE_KEYS = [SA_EMAIL, SA_TRACK, SA_STATUS, SA_NEEDS_ATTENTION, SA_FAILED_TOOL]
KEEP_TABLES = {"project", "alembic_version"}


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


def empty_tables(engine: sa.Engine) -> None:
    tables = [t for t in sa.inspect(engine).get_table_names() if t not in KEEP_TABLES]
    with engine.begin() as conn:
        quoted = ", ".join(f'"{t}"' for t in tables)
        conn.execute(sa.text(f"TRUNCATE {quoted} CASCADE"))


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


@dataclass
class Stack:
    settings: Settings
    api_url: str
    sandbox_url: str
    client: Client
    engine: sa.Engine
    mail: MailCatcher

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=30)

    async def sold_session(
        self, email: str, track: str = "DP", name: str = "Ada Lovelace", **pay: Any
    ) -> dict[str, Any]:
        """A real sale (`tests.support.sell`) with the sandbox's own webhooks lost: Stripe's
        copy of the Session comes back, for a test to deliver its own signed events about
        it. `pay` goes to the sandbox's pay control (e.g. `async=True`)."""
        async with (
            self.webhooks_lost(),
            self.http() as http,
            httpx.AsyncClient(base_url=self.sandbox_url, timeout=30) as sb,
        ):
            return await sell(http, sb, email, track, name, **pay)

    @asynccontextmanager
    async def webhooks_lost(self) -> AsyncIterator[None]:
        """Stripe's webhooks never arrive: the sandbox delivers to a closed port, and the
        old target comes back only once it has given up on every event sent meanwhile."""
        async with httpx.AsyncClient(base_url=self.sandbox_url, timeout=30) as sb:
            await sb.post("/_sandbox/webhook_url", json={"url": "http://127.0.0.1:9/"})
            try:
                yield
            finally:
                for _ in range(300):
                    events = (await sb.get("/_sandbox/events")).json()["data"]
                    if all(e["delivery"]["status"] != "pending" for e in events):
                        break
                    await asyncio.sleep(0.1)
                await sb.post(
                    "/_sandbox/webhook_url", json={"url": f"{self.api_url}{WEBHOOK_PATH}"}
                )


def make_settings(
    database_url: str, temporal_address: str, mail: MailCatcher, **overrides: object
) -> Settings:
    api_port = overrides.pop("port", None) or free_port()
    values: dict[str, object] = {
        "app_env": "test",
        "port": api_port,
        "public_base_url": f"http://127.0.0.1:{api_port}",
        "database_url": database_url,
        "temporal_address": temporal_address,
        "temporal_task_queue": f"enrollment-{uuid.uuid4().hex[:8]}",
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "smtp_port": mail.smtp_port,
        "tool_retry_minutes": 0.2,
        # The test clients connect from loopback and play a proxy naming other clients.
        "trusted_proxies": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


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
