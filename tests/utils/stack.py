"""The reusable test stack: the API over HTTP, the Stripe sandbox, Temporal, PostgreSQL and
the mail catcher as one object, and the settings every stack starts from."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from temporalio.client import Client

from core.contracts import SA_EMAIL, SA_FAILED_TOOL, SA_NEEDS_ATTENTION, SA_STATUS, SA_TRACK
from core.settings import Settings
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from tests.utils.helpers import (
    free_port,
    sell,
)

WEBHOOK_SECRET = "whsec_test_" + uuid.uuid4().hex
SEARCH_ATTRIBUTE_KEYS = [SA_EMAIL, SA_TRACK, SA_STATUS, SA_NEEDS_ATTENTION, SA_FAILED_TOOL]
KEEP_TABLES = {"project", "alembic_version", "cohort"}
# The migration's seed cohorts (migrations/versions/2026-12-02_cohorts.py), as it leaves them.
SEED_COHORTS = ("DP-2027-01", "FSD-2027-01")
SEED_SEATS = 10_000


def empty_tables(engine: sa.Engine) -> None:
    """Every table empty but the catalogue's; the seed cohorts back as migrated, every
    other cohort gone."""
    tables = [t for t in sa.inspect(engine).get_table_names() if t not in KEEP_TABLES]
    with engine.begin() as conn:
        quoted = ", ".join(f'"{t}"' for t in tables)
        conn.execute(sa.text(f"TRUNCATE {quoted} CASCADE"))
        conn.execute(
            sa.text("DELETE FROM cohort WHERE code NOT IN :seeds").bindparams(
                sa.bindparam("seeds", expanding=True)
            ),
            {"seeds": list(SEED_COHORTS)},
        )
        conn.execute(
            sa.text(
                "UPDATE cohort SET held = 0, taken = 0, size = :size, state = 'on_sale', "
                "sales_close_at = NULL, sales_open_at = now() - interval '1 day'"
            ),
            {"size": SEED_SEATS},
        )


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
        """A real sale (`tests.utils.helpers.sell`) with the sandbox's own webhooks lost: Stripe's
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
        # Stacks that follow fulfilment to its end: a run closes when it lands. The ops stack
        # keeps the owner open for its later events, as production does.
        "enrollment_owner_days": 0,
        # The test clients connect from loopback and play a proxy naming other clients.
        "trusted_proxies": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]
