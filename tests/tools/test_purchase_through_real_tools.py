"""A purchase through every real adapter, checked with each tool's own client using the
credentials the dashboard reveals; then a full refund, after which each access is refused
and nothing is left running.

Real here: the API over HTTP, the worker, Temporal, PostgreSQL (the learning database),
Superset, Prefect, JupyterLab and code-server processes (the process workspace adapter);
Stripe is the offline sandbox, reached through the official SDK. The Docker workspace
adapter's container specs run against Podman in test_workspace_adapter.py.
"""

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
import sqlalchemy as sa
import stripe
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from core.models import AuditEvent, Enrollment, User
from core.tools.prefect import work_pool_name
from core.tools.process_workspace import ProcessWorkspaceAdapter, default_binary
from core.tracks import TOOL_CODESERVER, TOOL_JUPYTER
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from scripts.tools import tool_servers
from tests.utils.helpers import free_port
from tests.utils.stack import WEBHOOK_SECRET, make_settings
from worker import build_worker

pytestmark = [pytest.mark.superset, pytest.mark.prefect, pytest.mark.workspace_process]

SANDBOX_KEY = "sk_test_sandbox"
READY_WITHIN_S = 240.0  # a cold JupyterLab start on a loaded 2-core machine


@dataclass
class RealStack:
    api_url: str
    sandbox_url: str
    engine: sa.Engine

    def status(self, session_id: str) -> str | None:
        with Session(self.engine) as s:
            row = s.exec(
                select(Enrollment).where(Enrollment.checkout_session_id == session_id)
            ).first()
            return row.status if row else None

    def username(self, email: str) -> str:
        with Session(self.engine) as s:
            return s.exec(select(User).where(User.email == email)).one().username

    def audited(self, session_id: str, action: str) -> bool:
        with Session(self.engine) as s:
            return (
                s.exec(
                    select(AuditEvent.id)
                    .join(Enrollment, AuditEvent.enrollment_id == Enrollment.id)  # type: ignore[arg-type]
                    .where(Enrollment.checkout_session_id == session_id)
                    .where(AuditEvent.action == action)
                ).first()
                is not None
            )

    async def wait_audited(self, session_id: str, action: str, within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not await asyncio.to_thread(self.audited, session_id, action):
            assert asyncio.get_running_loop().time() < deadline, f"no {action} for {session_id}"
            await asyncio.sleep(0.5)

    async def wait_status(self, session_id: str, *wanted: str, within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while (status := await asyncio.to_thread(self.status, session_id)) not in wanted:
            assert asyncio.get_running_loop().time() < deadline, f"{session_id} is {status}"
            await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module")
async def real(
    database_url: str,
    engine: sa.Engine,
    temporal: WorkflowEnvironment,
    mail: MailCatcher,
    learning_db: str,
    superset_server: tool_servers.RunningServer,
    prefect_server: tool_servers.RunningServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RealStack]:
    tool_servers.run_ensure("ensure-jupyter.sh")
    tool_servers.run_ensure("ensure-codeserver.sh")
    sandbox_port = free_port()
    root = tmp_path_factory.mktemp("workspaces")
    settings = make_settings(
        database_url,
        temporal.client.service_client.config.target_host,
        mail,
        stripe_api_base=f"http://127.0.0.1:{sandbox_port}",
        learning_database_url=learning_db,
        superset_url=superset_server.url,
        superset_admin_username=superset_server.admin_username,
        superset_admin_password=superset_server.admin_password,
        prefect_api_url=prefect_server.url,
        prefect_api_auth_string=prefect_server.auth_string,
        workspace_backend="process",
        workspace_root=str(root),
        tool_retry_minutes=4.0,
    )
    sandbox_app = create_sandbox(
        webhook_url=f"{settings.public_base_url}{WEBHOOK_PATH}",
        webhook_secret=WEBHOOK_SECRET,
        public_url=f"http://127.0.0.1:{sandbox_port}",
        retry_delays=(0.2, 0.5, 1, 2),
    )
    with (
        BackgroundServer(sandbox_app, port=sandbox_port) as sandbox,
        BackgroundServer(create_app(settings), port=settings.port) as api,
        ThreadPoolExecutor(max_workers=64) as executor,
    ):
        worker = build_worker(temporal.client, settings, executor)
        try:
            async with worker:
                yield RealStack(api.url, sandbox.url, engine)
        finally:
            for tool in (TOOL_JUPYTER, TOOL_CODESERVER):  # the students not refunded
                ProcessWorkspaceAdapter(tool, default_binary(tool), root).stop_all()


async def buy(real: RealStack, email: str, track: str) -> tuple[httpx.AsyncClient, str, str]:
    """A browser that pays and lands logged in: (browser, session id, payment intent)."""
    browser = httpx.AsyncClient(base_url=real.api_url, timeout=60)
    r = await browser.post(
        "/api/payments/create-anonymous-checkout/",
        json={"email": email, "name": "Real Tools", "track": track},
    )
    assert r.status_code == 200, r.text
    session_id = r.json()["sessionId"]
    async with httpx.AsyncClient(base_url=real.sandbox_url, timeout=30) as sb:
        paid = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
    assert paid.status_code == 200, paid.text
    await real.wait_status(session_id, "READY", within=READY_WITHIN_S)
    landed = await browser.get("/api/payments/verify-session/", params={"session_id": session_id})
    assert landed.status_code == 200 and landed.json()["tools_provisioned"], landed.text
    browser.headers["Authorization"] = f"Bearer {landed.json()['access']}"
    return browser, session_id, paid.json()["payment_intent"]["id"]


async def reveal(browser: httpx.AsyncClient, tool: str) -> dict[str, Any]:
    r = await browser.get(f"/api/student/tools/{tool}/credentials")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["development"] is False, body
    return body


def pg_connect(creds: dict[str, Any]) -> psycopg.Connection[Any]:
    details = creds["details"]
    return psycopg.connect(
        host=details.get("host", "127.0.0.1"),
        port=int(details.get("port", 5432)),
        dbname=details.get("database"),
        user=creds["username"],
        password=creds["password"],
        connect_timeout=5,
    )


async def test_a_purchase_works_in_every_real_tool_and_a_refund_ends_each(
    real: RealStack,
    superset_server: tool_servers.RunningServer,
    prefect_server: tool_servers.RunningServer,
    run_id: str,
) -> None:
    run = run_id  # the learning database's clean-up drops the roles named after it
    (a, a_sid, a_pi), (b, _, _) = await asyncio.gather(
        buy(real, f"t{run}_ada@example.com", "DP"), buy(real, f"t{run}_bob@example.com", "DP")
    )
    fsd, fsd_sid, _ = await buy(real, f"t{run}_cy@example.com", "FSD")

    # PostgreSQL: a table in the student's own schema, and none in another's.
    pg_a, pg_b = await reveal(a, "postgres"), await reveal(b, "postgres")
    with pg_connect(pg_a) as conn:
        conn.execute("CREATE TABLE mine (id int)")
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'CREATE TABLE "{pg_b["username"]}".theirs (id int)')

    # Superset: the student logs in with the revealed password.
    superset = await reveal(a, "superset")
    login = {"username": superset["username"], "password": superset["password"]}
    async with httpx.AsyncClient(base_url=superset_server.url, timeout=30) as ss:
        r = await ss.post("/api/v1/security/login", json={**login, "provider": "db"})
        assert r.status_code == 200 and r.json().get("access_token"), r.text

    # Prefect: the student's work pool exists and is not paused (a pool has no login).
    pool = work_pool_name(real.username(f"t{run}_ada@example.com"))
    auth = httpx.BasicAuth(*prefect_server.auth_string.split(":", 1))
    async with httpx.AsyncClient(base_url=prefect_server.url, auth=auth, timeout=30) as pf:
        r = await pf.get(f"/work_pools/{pool}")
        assert r.status_code == 200 and r.json()["is_paused"] is False, r.text

    # JupyterLab: the token opens the API; without it, refused.
    jupyter = await reveal(a, "jupyter")
    base = jupyter["url"].removesuffix("/lab").rstrip("/")
    token = {"Authorization": f"token {jupyter['password']}"}
    async with httpx.AsyncClient(timeout=30) as http:  # no cookies kept between them
        ok = await http.get(f"{base}/api/status", headers=token)
        assert ok.status_code == 200, ok.text
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{base}/api/status")).status_code in (401, 403)
        wrong = {"Authorization": "token not-the-token"}
        assert (await http.get(f"{base}/api/status", headers=wrong)).status_code in (401, 403)

    # code-server: the password logs in.
    code = await reveal(fsd, "codeserver")
    async with httpx.AsyncClient(base_url=code["url"].rstrip("/"), timeout=30) as http:
        r = await http.post("/login", data={"password": code["password"]})
        assert r.status_code in (302, 303) and r.cookies, r.text
        wrong = await http.post("/login", data={"password": "not-it"})
        assert not wrong.cookies

    # A full refund of Ada's payment: every access ends, nothing is left running.
    client = stripe.StripeClient(SANDBOX_KEY, base_addresses={"api": real.sandbox_url})
    await asyncio.to_thread(client.v1.refunds.create, {"payment_intent": a_pi})
    # REVOKED is set (and the login ended) before the tools are deprovisioned, in parallel;
    # the revocation is over when its audit event is written, after every tool's step.
    await real.wait_status(a_sid, "REVOKED", within=120)
    await real.wait_audited(a_sid, "enrollment_revoked", within=120)
    async with httpx.AsyncClient(base_url=superset_server.url, timeout=30) as ss:
        r = await ss.post("/api/v1/security/login", json={**login, "provider": "db"})
        assert r.status_code == 401, r.text
    with pytest.raises(psycopg.OperationalError):
        pg_connect(pg_a).close()
    async with httpx.AsyncClient(base_url=prefect_server.url, auth=auth, timeout=30) as pf:
        r = await pf.get(f"/work_pools/{pool}")
        assert r.status_code == 404 or r.json()["is_paused"] is True, r.text
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"{base}/api/status", headers=token)
    # The other students keep theirs.
    with pg_connect(pg_b) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert real.status(fsd_sid) == "READY"
    for browser in (a, b, fsd):
        await browser.aclose()
