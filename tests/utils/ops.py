"""An operations stack for the support, revocation and reconciliation tests.

Its own Stripe sandbox (so a test may point the webhooks elsewhere), API and worker on
their own task queue, sharing the session's Postgres, Temporal dev server and mail catcher.
The worker's tool adapters can be broken on purpose (`ops.switch.broken`), and duplicate
purchases are refunded automatically (AUTO_REFUND_DUPLICATES) on this stack."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlmodel import Session, col, select
from temporalio.client import WorkflowExecutionStatus

from core.accounts.security import hash_password
from core.contracts import workflow_id_for
from core.db import session_scope
from core.models import AuditEvent, Enrollment, Role, User
from core.payments.stripe_gateway import StripeGateway
from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolAdapter,
    ToolPermanentError,
    ToolSubject,
    ToolTransientError,
    no_progress,
)
from tests.utils.helpers import PASSWORD, ROOT
from tests.utils.stack import Stack

SANDBOX_KEY = "sk_test_sandbox"


CLI_TIMEOUT_S = 120


class ToolSwitch:
    """Which tools fail right now (provisioning permanently, deprovisioning transiently),
    and what was deprovisioned."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.unreachable: set[str] = set()  # deprovision and holders raise a transient error
        self.deprovisioned: list[tuple[str, str]] = []


class SwitchableAdapter:
    """A real (development) adapter that fails like a misconfigured server when switched."""

    def __init__(self, inner: ToolAdapter, switch: ToolSwitch) -> None:
        self.inner, self.switch = inner, switch
        self.name, self.development = inner.name, inner.development

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        if self.name in self.switch.broken:
            raise ToolPermanentError(f"{self.name}: admin credentials refused (test fault)")
        return self.inner.provision(subject, progress)

    def status(self, subject: ToolSubject) -> ToolAccount:
        return self.inner.status(subject)

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        if self.name in self.switch.unreachable:
            raise ToolTransientError(f"{self.name}: server unreachable (test fault)")
        self.switch.deprovisioned.append((self.name, subject.username))
        self.inner.deprovision(subject, drop)

    def holders(self) -> list[Held]:
        if self.name in self.switch.unreachable:
            raise ToolTransientError(f"{self.name}: server unreachable (test fault)")
        return self.inner.holders()


@dataclass
class Paid:
    session_id: str
    payment_intent: str
    charge: str
    email: str


@dataclass
class Ops(Stack):
    """The shared test stack, plus switchable tools and a Stripe gateway for support."""

    switch: ToolSwitch
    gateway: StripeGateway
    tokens: dict[str, str] = field(default_factory=dict)

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.api_url, timeout=60, headers=headers)

    def sandbox(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.sandbox_url,
            timeout=30,
            headers={"Authorization": f"Bearer {SANDBOX_KEY}"},
        )

    # ---- paying ------------------------------------------------------------------------

    async def buy(self, email: str, track: str = "DP") -> Paid:
        """Checkout through the API, pay through the sandbox (its webhook fulfils)."""
        async with self.http() as http:
            r = await http.post(
                "/api/payments/create-anonymous-checkout/",
                json={"email": email, "name": "Ada Lovelace", "track": track},
            )
            assert r.status_code == 200, r.text
            session_id = r.json()["sessionId"]
        async with self.sandbox() as sb:
            r = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
            assert r.status_code == 200, r.text
            body = r.json()
        return Paid(session_id, body["payment_intent"]["id"], body["charge"]["id"], email)

    async def charge(self, charge_id: str) -> dict[str, Any]:
        async with self.sandbox() as sb:
            r = await sb.get(f"/v1/charges/{charge_id}")
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    # ---- reading the database ----------------------------------------------------------

    def enrollment(self, session_id: str) -> Enrollment | None:
        with Session(self.engine) as s:
            return s.exec(
                select(Enrollment).where(Enrollment.checkout_session_id == session_id)
            ).first()

    def audit(self, session_id: str, action: str | None = None) -> list[AuditEvent]:
        with Session(self.engine) as s:
            e = s.exec(select(Enrollment).where(Enrollment.checkout_session_id == session_id)).one()
            query = select(AuditEvent).where(AuditEvent.enrollment_id == e.id)
            if action:
                query = query.where(AuditEvent.action == action)
            return list(s.exec(query.order_by(col(AuditEvent.id))).all())

    def user(self, email: str) -> User:
        with Session(self.engine) as s:
            return s.exec(select(User).where(User.email == email)).one()

    async def wait_for(
        self, predicate: Callable[[], Any], limit_s: float = 45.0, what: str = "condition"
    ) -> Any:
        deadline = asyncio.get_running_loop().time() + limit_s
        while True:
            value = await asyncio.to_thread(predicate)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what} not met within {limit_s}s")
            await asyncio.sleep(0.2)

    async def fulfilled(self, session_id: str, limit_s: float = 45.0) -> None:
        """Until the enrollment's run finished its fulfilment: closed, or open as the owner
        of its later events with nothing pending."""
        handle = self.client.get_workflow_handle(workflow_id_for(session_id))
        deadline = asyncio.get_running_loop().time() + limit_s
        while asyncio.get_running_loop().time() < deadline:
            desc = await handle.describe()
            if desc.status != WorkflowExecutionStatus.RUNNING:
                return
            if not desc.raw_description.pending_activities:
                state = await handle.query("state")
                if state and state.get("finished"):
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{session_id}: fulfilment still going")

    async def wait_status(
        self, session_id: str, *statuses: str, limit_s: float = 45.0
    ) -> Enrollment:
        def check() -> Enrollment | None:
            e = self.enrollment(session_id)
            return e if e is not None and e.status in statuses else None

        try:
            return await self.wait_for(check, limit_s, f"status in {statuses}")  # type: ignore[no-any-return]
        except AssertionError:
            e = self.enrollment(session_id)
            raise AssertionError(
                f"{session_id} is {e.status if e else 'missing'}, wanted {statuses}"
            ) from None

    # ---- people --------------------------------------------------------------------------

    def make_user(self, email: str, role: str) -> None:
        with session_scope(self.engine) as s:
            s.add(
                User(
                    email=email,
                    username=email.split("@")[0].replace(".", "_")[:30],
                    name=email.split("@")[0],
                    password_hash=hash_password(PASSWORD),
                    role=role,
                    track="DP" if role == Role.STUDENT else None,
                    enrollment_status="STAFF" if role == Role.STAFF else "ENROLLED",
                )
            )

    async def login(self, email: str, password: str = PASSWORD) -> str:
        async with self.http() as http:
            r = await http.post("/api/auth/login", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            return str(r.json()["access"])

    async def staff_token(self, email: str = "sam.staff@staff.example.com") -> str:
        await asyncio.to_thread(self.make_user, email, Role.STAFF)
        return await self.login(email)

    async def student_token(self, email: str = "stu.dent@example.com") -> str:
        await asyncio.to_thread(self.make_user, email, Role.STUDENT)
        return await self.login(email)

    # ---- the support CLI, as a separate process ------------------------------------------

    def cli_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name, value in self.settings.model_dump().items():
            if value is None:
                continue
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        env.update(extra)
        return env

    async def cli(
        self, *args: str, actor: str = "staff:tester", env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "support.cli", *args, "--actor", actor]

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                argv,
                cwd=ROOT,
                env=env or self.cli_env(),
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_S,
            )

        done = await asyncio.to_thread(run)
        return done.returncode, done.stdout, done.stderr

    async def cli_json(self, *args: str, actor: str = "staff:tester") -> Any:
        code, out, err = await self.cli(*args, "--json", actor=actor)
        assert code == 0, f"onramp-support {' '.join(args)} -> {code}\n{out}\n{err}"
        return json.loads(out)
