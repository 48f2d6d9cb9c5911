"""Live progress over real HTTP, PostgreSQL LISTEN/NOTIFY and the Temporal dev server: the
success page's event stream, its bounds, and verify-session's long-poll.

This module runs its own API and worker whose sequential activities pause before they act,
so each step is a change of its own the stream must deliver; tools take 300 ms each.
"""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from fastapi import FastAPI
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.enrollment import EnrollmentActivities
from api.main import create_app
from core.contracts import AccountResult, EnrollmentInput, EnrollmentRef, WelcomeEmailInput
from core.db import make_engine
from core.mail import Mailer
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.tools.registry import build_adapters
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.helpers import free_port
from tests.utils.stack import WEBHOOK_SECRET, make_settings
from workflows import WORKFLOWS

STREAM = "/api/payments/progress-stream/"
VERIFY = "/api/payments/verify-session/"
STEP_PAUSE_S = 0.4


class PausedActivities(EnrollmentActivities):
    """The real activities, each sequential step starting a little later."""

    @activity.defn(name="record_payment")
    def record_payment(self, inp: EnrollmentInput) -> int:
        time.sleep(STEP_PAUSE_S)
        return super().record_payment(inp)

    @activity.defn(name="create_account")
    def create_account(self, inp: EnrollmentInput) -> AccountResult:
        time.sleep(STEP_PAUSE_S)
        return super().create_account(inp)

    @activity.defn(name="unlock_first_project")
    def unlock_first_project(self, ref: EnrollmentRef) -> int:
        time.sleep(STEP_PAUSE_S)
        return super().unlock_first_project(ref)

    @activity.defn(name="send_welcome_email")
    def send_welcome_email(self, inp: WelcomeEmailInput) -> None:
        time.sleep(STEP_PAUSE_S)
        super().send_welcome_email(inp)


@dataclass
class Live:
    settings: Settings
    app: FastAPI
    api_url: str
    sandbox_url: str
    engine: sa.Engine

    def http(self, client_ip: str = "203.0.113.7") -> httpx.AsyncClient:
        # The test plays the trusted proxy (127.0.0.1) naming the client.
        return httpx.AsyncClient(
            base_url=self.api_url, timeout=60, headers={"X-Forwarded-For": client_ip}
        )

    async def checkout(self, http: httpx.AsyncClient, email: str) -> str:
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": email, "name": "Ada Lovelace", "track": "DP"},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["sessionId"])

    async def pay(self, session_id: str) -> None:
        async with httpx.AsyncClient(
            base_url=self.sandbox_url,
            timeout=30,
            headers={"Authorization": "Bearer sk_test_sandbox"},
        ) as sb:
            r = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
            assert r.status_code == 200, r.text

    @property
    def hub(self) -> Any:
        return self.app.state.progress_hub


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(
    database_url: str, engine: sa.Engine, temporal: WorkflowEnvironment, mail: MailCatcher
) -> AsyncIterator[Live]:
    sandbox_port = free_port()
    settings = make_settings(
        database_url,
        temporal.client.service_client.config.target_host,
        mail,
        stripe_api_base=f"http://127.0.0.1:{sandbox_port}",
        temporal_task_queue=f"live-{secrets.token_hex(4)}",
        tool_dev_latency_ms=300,
        progress_streams_per_client=2,
        progress_heartbeat_seconds=0.5,
    )
    sandbox_app = create_sandbox(
        webhook_url=f"{settings.public_base_url}{WEBHOOK_PATH}",
        webhook_secret=WEBHOOK_SECRET,
        public_url=f"http://127.0.0.1:{sandbox_port}",
        retry_delays=(0.2, 0.5, 1, 2),
    )
    worker_engine = make_engine(database_url)
    activities = PausedActivities(
        settings, worker_engine, build_adapters(settings), Mailer(settings), StripeGateway(settings)
    )
    app = create_app(settings)
    with (
        BackgroundServer(sandbox_app, port=sandbox_port) as sandbox,
        BackgroundServer(app, port=settings.port, proxy_headers=False) as api,
        ThreadPoolExecutor(max_workers=16) as executor,
    ):
        worker = Worker(
            temporal.client,
            task_queue=settings.temporal_task_queue,
            workflows=WORKFLOWS,
            activities=activities.all(),
            activity_executor=executor,
        )
        async with worker:
            yield Live(settings, app, api.url, sandbox.url, engine)
    worker_engine.dispose()


@pytest.fixture
def fresh_live(live: Live, clean_db: sa.Engine) -> Live:
    return live


async def events(
    http: httpx.AsyncClient, session_id: str, comments: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Every event of one stream, until the server ends it."""
    got: list[tuple[str, dict[str, Any]]] = []
    async with http.stream("GET", STREAM, params={"session_id": session_id}) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        name, data = "message", ""
        async for line in r.aiter_lines():
            if line.startswith(":") and comments is not None:
                comments.append(line)
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                got.append((name, json.loads(data)))
                name, data = "message", ""
    return got


def statuses(event: dict[str, Any]) -> dict[str, str]:
    return {s["key"]: s["status"] for s in event["progress"]["steps"]}


async def test_a_stream_shows_each_step_in_order_and_ends_with_ready(fresh_live: Live) -> None:
    async with fresh_live.http() as http:
        session_id = await fresh_live.checkout(http, "ada@example.com")
        stream = asyncio.create_task(events(http, session_id))
        await asyncio.sleep(0.5)  # the stream is open before the payment
        await fresh_live.pay(session_id)
        got = await asyncio.wait_for(stream, 60)

        names = [name for name, _ in got]
        assert names[-1] == "ready" and set(names[:-1]) == {"progress"}, names
        assert got[0][1]["progress"]["current_step"] == "payment"
        done_counts = [e["progress"]["steps_done"] for _, e in got]
        assert done_counts == sorted(done_counts), done_counts
        # The changes arrive as they happen, several states on the way. Steps a few
        # milliseconds apart (payment, then account) may reach the hub's one read together,
        # so which intermediate states show is timing; the tools' wait always does.
        seen = [statuses(e) for _, e in got if len(e["progress"]["steps"]) > 1]
        assert len({tuple(sorted(s.items())) for s in seen}) >= 3, seen
        assert any(s["tool:superset"] == "running" for s in seen), seen
        # The buyer's own stream: plain-word details (the development stand-in note).
        final = got[-1][1]["progress"]
        assert {s["key"]: s["detail"] for s in final["steps"]}["tool:superset"] in (
            "development stand-in",
            "",
        )
        # Tokens never travel in the stream; verify-session hands them out once.
        assert all("access" not in json.dumps(e) for _, e in got)
        r = await http.get(VERIFY, params={"session_id": session_id})
        assert r.status_code == 200 and r.json()["login_required"] is False and r.json()["access"]


async def test_two_streams_of_one_enrollment_get_the_same_events_from_one_read(
    fresh_live: Live,
) -> None:
    async with fresh_live.http("203.0.113.10") as a, fresh_live.http("203.0.113.11") as b:
        session_id = await fresh_live.checkout(a, "grace@example.com")
        reads_before = fresh_live.hub.reads
        first = asyncio.create_task(events(a, session_id))
        second = asyncio.create_task(events(b, session_id))
        await asyncio.sleep(0.5)
        await fresh_live.pay(session_id)
        got_a, got_b = await asyncio.wait_for(asyncio.gather(first, second), 60)
    assert got_a[-1][0] == "ready"
    # The second browser did not start the checkout: no step details for it.
    assert [statuses(e) for _, e in got_a] == [statuses(e) for _, e in got_b]
    assert [e["version"] for _, e in got_a] == [e["version"] for _, e in got_b]
    assert all(s["detail"] == "" for _, e in got_b for s in e["progress"]["steps"])
    with fresh_live.engine.connect() as conn:
        bumps = conn.execute(
            sa.text("SELECT progress_version FROM enrollment WHERE checkout_session_id = :s"),
            {"s": session_id},
        ).scalar_one()
    # Reads follow notifications (a few settling reads each), not watchers or seconds.
    reads = fresh_live.hub.reads - reads_before
    assert reads <= 3 * bumps + 3, (reads, bumps)


async def test_streams_per_address_are_capped_and_released_when_the_client_leaves(
    fresh_live: Live,
) -> None:
    async with fresh_live.http("198.51.100.1") as http:
        session_id = await fresh_live.checkout(http, "cap@example.com")
        open_streams = []
        for _ in range(2):  # PROGRESS_STREAMS_PER_CLIENT on this stack
            ctx = http.stream("GET", STREAM, params={"session_id": session_id})
            r = await ctx.__aenter__()
            assert r.status_code == 200
            open_streams.append(ctx)
        refused = await http.get(STREAM, params={"session_id": session_id})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "Too many streams" and "retry-after" in refused.headers
        async with fresh_live.http("198.51.100.2") as other:
            async with other.stream("GET", STREAM, params={"session_id": session_id}) as r:
                assert r.status_code == 200  # another address has its own slots
        await open_streams.pop().__aexit__(None, None, None)  # the client goes away
        for _ in range(50):
            if fresh_live.hub.open == 1:
                break
            await asyncio.sleep(0.1)
        assert fresh_live.hub.open == 1
        async with http.stream("GET", STREAM, params={"session_id": session_id}) as r:
            assert r.status_code == 200
            # An idle stream carries heartbeats (every 0.5 s on this stack).
            lines = r.aiter_lines()
            assert (await asyncio.wait_for(lines.__anext__(), 5)).startswith("event: ")
            while not (line := await asyncio.wait_for(lines.__anext__(), 5)).startswith(":"):
                pass
            assert line == ": keep-alive"
        await open_streams.pop().__aexit__(None, None, None)


async def test_unknown_session_is_refused_before_the_stream_opens(fresh_live: Live) -> None:
    async with fresh_live.http() as http:
        r = await http.get(STREAM, params={"session_id": "cs_test_" + "x" * 24})
        assert r.status_code == 404 and r.json()["error"] == "Unknown session"
        r = await http.get(STREAM, params={"session_id": "nope"})
        assert r.status_code == 400
    assert fresh_live.hub.open == 0


async def test_long_poll_answers_as_soon_as_the_state_moves(fresh_live: Live) -> None:
    async with fresh_live.http() as http:
        session_id = await fresh_live.checkout(http, "long@example.com")
        await fresh_live.pay(session_id)
        r = await http.get(VERIFY, params={"session_id": session_id})
        assert r.status_code == 202
        answers = []
        while r.status_code == 202:
            since = r.json()["version"]
            began = time.monotonic()
            r = await http.get(
                VERIFY, params={"session_id": session_id, "wait": 25, "since": since}
            )
            answers.append(time.monotonic() - began)
            assert r.status_code == 200 or r.json()["version"] != since
        # Each answer came with the change (steps are 0.3-0.4 s apart), not after 25 s.
        assert len(answers) >= 3 and max(answers) < 5, answers
        assert r.json()["login_required"] is False  # the paying browser, logged in once
        # A version the caller has not seen is answered at once.
        r = await http.get(VERIFY, params={"session_id": session_id, "wait": 25, "since": "0" * 16})
        assert r.status_code == 200
