"""Chaos tests: the real services as processes that the tests kill, stop and restart.

Each test gets its own Temporal dev server (SQLite file, restartable), a worker running
`worker.py` as a subprocess (so it can be SIGKILLed), the API over HTTP, the Stripe sandbox
(its own webhooks off unless a test brings a sandbox of its own) and an SMTP catcher that
records every message. PostgreSQL that a test stops is a private cluster (initdb +
pg_ctl on a free port), never the machine's shared server."""

import asyncio
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from temporalio.client import Client, WorkflowExecutionStatus

from api.main import create_app
from core.contracts import workflow_id_for
from core.settings import Settings
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import CaughtMessage, MailCatcher
from devstack.processes import (
    Process,
    TemporalServer,
    settings_env,
    wait_for_poller,
)
from devstack.processes import worker_process as make_worker_process
from sandbox.server import BackgroundServer
from tests.utils.helpers import (
    sell_many,
)

WEBHOOK = WEBHOOK_PATH


def say(message: str) -> None:
    """What a chaos test injected and counted, shown with `-s` and in failure reports."""
    print(f"[chaos] {message}", flush=True)


LINK = re.compile(r"/set-password\?token=([A-Za-z0-9_\-]+)")


def recipient(m: CaughtMessage) -> str:
    return str(m.get("To", "")).lower()


def link_token(m: CaughtMessage) -> str | None:
    """The set-password link's token in the message, when it has one."""
    found = LINK.search(m.text or "")
    return found.group(1) if found else None


def is_welcome(m: CaughtMessage) -> bool:
    return str(m.get("Subject", "")).startswith(("Welcome to Onramp", "Your new Onramp enrollment"))


def is_support_alert(m: CaughtMessage) -> bool:
    return "needs attention" in str(m.get("Subject", ""))


@dataclass
class Chaos:
    temporal: TemporalServer
    client: Client
    database_url: str
    engine: sa.Engine
    mail: MailCatcher
    values: dict[str, Any]
    log_dir: Path
    api: BackgroundServer | None = None
    worker: Process | None = None
    worker_starts: int = 0
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings(_env_file=None, **self.values)  # type: ignore[arg-type, call-arg]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.values['port']}"

    @property
    def secret(self) -> str:
        return str(self.values["stripe_webhook_secret"])

    @property
    def sandbox_url(self) -> str:
        return str(self.values["stripe_api_base"])

    async def sell(self, emails: list[str]) -> list[dict[str, Any]]:
        """Real sales (`tests.utils.helpers.sell_many`): our checkout endpoint, then the sandbox
        takes the card. Stripe's copies of the paid Sessions, in email order; what the
        sandbox delivers by itself is up to the sandbox (the default one delivers nothing)."""
        return await sell_many(self.api_url, self.sandbox_url, emails)

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=30, **kwargs)

    def start_api(self) -> None:
        self.api = BackgroundServer(create_app(self.settings), port=int(self.values["port"]))
        self.api.start()

    async def start_worker(self, **extra: object) -> Process:
        """(Re)start the worker subprocess and wait until it polls the task queue."""
        if self.worker is not None and self.worker.running():
            raise RuntimeError("the worker is already running")
        env = settings_env(**{**self.values, **extra})
        if self.worker is None:
            self.worker = make_worker_process(env, self.log_dir)
        self.worker.env = env
        self.worker.start()
        self.worker_starts += 1
        await wait_for_poller(self.client, self.values["temporal_task_queue"], self.worker.pid)
        return self.worker

    def kill_worker(self) -> None:
        """SIGKILL without waiting (safe from any thread)."""
        if self.worker is not None and self.worker.popen is not None:
            try:
                os.killpg(self.worker.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def deliver(
        self, http: httpx.AsyncClient, payload: bytes, headers: dict[str, str]
    ) -> int:
        r = await http.post(WEBHOOK, content=payload, headers=headers)
        return r.status_code

    async def deliver_like_stripe(
        self,
        http: httpx.AsyncClient,
        payload: bytes,
        headers: dict[str, str],
        within_s: float = 90.0,
    ) -> list[int | str]:
        """Redeliver on 5xx or no answer, backing off like Stripe (compressed); returns
        every attempt's status. Stops at the first 2xx/4xx or when `within_s` runs out."""
        attempts: list[int | str] = []
        delay = 0.25
        deadline = time.monotonic() + within_s
        while True:
            try:
                status: int | str = await self.deliver(http, payload, headers)
            except httpx.TransportError as err:
                status = type(err).__name__
            attempts.append(status)
            if isinstance(status, int) and status < 500:
                return attempts
            if time.monotonic() + delay > deadline:
                return attempts
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)

    async def wait_closed(
        self,
        session_ids: list[str],
        within_s: float,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, WorkflowExecutionStatus | None]:
        """Until every enrollment's workflow is closed (or `within_s`); their statuses."""
        deadline = time.monotonic() + within_s
        statuses: dict[str, WorkflowExecutionStatus | None] = {}
        while True:
            for sid in session_ids:
                if statuses.get(sid) not in (None, WorkflowExecutionStatus.RUNNING):
                    continue
                try:
                    desc = await self.client.get_workflow_handle(workflow_id_for(sid)).describe()
                    statuses[sid] = desc.status
                except Exception:  # noqa: BLE001 (not started yet, or the server restarting)
                    statuses[sid] = None
            open_ = [
                s for s, st in statuses.items() if st in (None, WorkflowExecutionStatus.RUNNING)
            ]
            if not open_ or time.monotonic() > deadline:
                return statuses
            if on_tick is not None:
                await on_tick()
            await asyncio.sleep(0.5)

    async def wait_started(self, session_ids: list[str], within_s: float) -> None:
        """Until every enrollment's workflow exists."""
        deadline = time.monotonic() + within_s
        pending = list(session_ids)
        while pending:
            sid = pending[0]
            try:
                await self.client.get_workflow_handle(workflow_id_for(sid)).describe()
                pending.pop(0)
                continue
            except Exception:  # noqa: BLE001 (not started yet)
                if time.monotonic() > deadline:
                    raise AssertionError(f"{len(pending)} enrollments never started") from None
            await asyncio.sleep(0.2)

    async def results(self, session_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {
            sid: await self.client.get_workflow_handle(workflow_id_for(sid)).result()
            for sid in session_ids
        }

    async def runs_of(self, session_ids: list[str]) -> Counter[str]:
        """How many runs Temporal holds per enrollment workflow id (1 each, or a duplicate)."""
        ids = {workflow_id_for(s) for s in session_ids}
        runs: Counter[str] = Counter()
        async for w in self.client.list_workflows("WorkflowType = 'EnrollmentWorkflow'"):
            if w.id in ids:
                runs[w.id] += 1
        return runs

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    async def close(self) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop, 10.0)
        if self.api is not None:
            self.api.stop()
        await asyncio.to_thread(self.temporal.stop)
        self.mail.stop()
        self.engine.dispose()
        for cleanup in reversed(self.cleanups):
            cleanup()


MakeChaos = Callable[..., Awaitable[Chaos]]


# Steps each enrollment records exactly once, however often its activities ran.
ONE_SHOT_AUDITS = (
    "payment_confirmed",
    "account_created",
    "enrolled",
    "project_unlocked",
    "welcome_email_sent",
)


def assert_every_step_once(chaos: Chaos, count: int) -> None:
    """Per enrollment: four ready tools (one row per user and tool), one unlocked project
    and one audit event of each one-shot step."""
    assert chaos.scalar("SELECT count(*) FROM tool_account WHERE status = 'ready'") == 4 * count
    assert chaos.scalar("SELECT count(DISTINCT (user_id, tool)) FROM tool_account") == 4 * count
    assert chaos.scalar("SELECT count(*) FROM project_unlock") == count
    audits = Counter(
        (row[0], row[1])
        for row in chaos.rows(
            "SELECT enrollment_id, action FROM audit_event WHERE action = ANY(:actions)",
            actions=list(ONE_SHOT_AUDITS),
        )
    )
    assert len(audits) == len(ONE_SHOT_AUDITS) * count and set(audits.values()) == {1}
