"""Fixtures of the chaos tests; their stack and helpers are in `tests/utils/chaos.py`."""

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client

from core.db import make_engine
from devstack.mailcatcher import MailCatcher
from devstack.processes import (
    PrivatePostgres,
    TemporalServer,
    postgres_bin_dir,
)
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.chaos import (
    Chaos,
    MakeChaos,
    say,
)
from tests.utils.helpers import (
    create_database,
    drop_database,
    free_port,
    migrate,
    require,
    sqlalchemy_url,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: kills, stops and restarts real processes (worker, Temporal, Postgres)"
    )


@pytest_asyncio.fixture
async def make_chaos(tmp_path: Path) -> AsyncIterator[MakeChaos]:
    """Builds a Chaos stack; `cluster=` puts the app database on a private cluster. Without
    `stripe_api_base=` the stack's Stripe is a sandbox of its own whose webhooks are off, so
    a test is the only deliverer of events about the sales it makes."""
    made: list[Chaos] = []

    async def make(
        cluster: PrivatePostgres | None = None, api: bool = True, **values: Any
    ) -> Chaos:
        cleanups: list[Callable[[], None]] = []
        if cluster is None:
            name = create_database("onramp_chaos")
            url = sqlalchemy_url(name)
            cleanups.append(lambda: drop_database(name))
        else:
            name = cluster.create_database(f"onramp_chaos_{secrets.token_hex(3)}")
            url = cluster.url(name, driver="postgresql+psycopg")
        migrate(url)
        mail = MailCatcher()
        mail.start()
        temporal = TemporalServer(tmp_path / f"temporal-{len(made)}")
        await temporal.start_async()
        api_port = free_port()
        secret = "whsec_chaos_" + secrets.token_hex(8)
        if "stripe_api_base" not in values:
            stripe_sandbox = BackgroundServer()
            stripe_sandbox.app = create_sandbox(
                webhook_url=None, webhook_secret=secret, public_url=stripe_sandbox.url
            )
            stripe_sandbox.start()
            cleanups.append(stripe_sandbox.stop)
            values["stripe_api_base"] = stripe_sandbox.url
        settings_values: dict[str, Any] = {
            "app_env": "test",
            "log_level": "INFO",
            "port": api_port,
            "public_base_url": f"http://127.0.0.1:{api_port}",
            "database_url": url,
            "temporal_address": temporal.address,
            "temporal_task_queue": f"enrollment-chaos-{uuid.uuid4().hex[:8]}",
            "stripe_webhook_secret": secret,
            "smtp_host": "127.0.0.1",
            "smtp_port": mail.smtp_port,
            "rate_limit_enabled": False,
            "worker_metrics_port": 0,
            "worker_sdk_metrics_port": 0,
            "reconcile_interval_minutes": 24 * 60,
            "learning_database_url": "",
            "superset_url": "",
            "prefect_api_url": "",
            "docker_host": "",
            "tool_dev_latency_ms": 0,
            "tool_retry_minutes": 1.0,
            # The chaos tests follow fulfilment to its end: a run closes when it lands (the
            # ops tests keep the owner open, as production does).
            "enrollment_owner_days": 0,
            "onramp_tool_faults": "",
        }
        settings_values.update(values)
        chaos = Chaos(
            temporal=temporal,
            client=await Client.connect(temporal.address),
            database_url=url,
            engine=make_engine(url),
            mail=mail,
            values=settings_values,
            log_dir=tmp_path,
            cleanups=cleanups,
        )
        made.append(chaos)
        if api:
            chaos.start_api()
        return chaos

    yield make
    for chaos in made:
        try:
            await chaos.close()
        except Exception as err:  # noqa: BLE001 (teardown must reach every stack)
            say(f"teardown: {err!r}")
        if chaos.worker is not None and chaos.worker.log_path.exists():
            errors = [
                line
                for line in chaos.worker.log_path.read_text(errors="replace").splitlines()
                if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line
            ]
            if errors:
                say(f"worker logged {len(errors)} errors; first: {errors[0][:300]}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster for this module, running when each test starts."""
    try:
        postgres_bin_dir()
        installed = True
    except FileNotFoundError:
        installed = False
    require(
        installed,
        "the PostgreSQL server binaries (initdb, pg_ctl under /usr/lib/postgresql)",
        "`make system-deps` installs them (Debian package postgresql)",
    )
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def running_cluster(cluster: PrivatePostgres) -> PrivatePostgres:
    if not cluster.running():
        cluster.start()
    return cluster
