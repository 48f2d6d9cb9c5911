"""Re-take the Temporal Web UI screenshots of the operator guide (README).

Runs real EnrollmentWorkflows (activities stood in: one student's Prefect refuses the
admin credentials) on a throwaway dev server with the Web UI, then photographs it with
headless Chromium: `.venv/bin/python docs/screenshots/capture.py`.
"""

import asyncio
import uuid
from pathlib import Path

from playwright.async_api import async_playwright
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from core.contracts import (
    SEARCH_ATTRIBUTES,
    AccountResult,
    CancelInput,
    Decision,
    EnrollmentInput,
    EnrollmentRef,
    StatusInput,
    ToolFailure,
    ToolInput,
    ToolResult,
    WelcomeEmailInput,
    workflow_id_for,
)
from core.enrollment.runs import start_enrollment
from core.payments.fulfilment import enrollment_options
from core.settings import Settings
from workflows import WORKFLOWS

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
PORT, UI_PORT = 17233, 18233
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PEOPLE = [
    ("Ada Lovelace", "ada@example.com", "DP", False),
    ("Grace Hopper", "grace@example.com", "FSD", False),
    ("Alan Turing", "alan@example.com", "DP", True),
    ("Edsger Dijkstra", "edsger@example.com", "DP", False),
]
BROKEN: set[str] = set()


@activity.defn(name="record_payment")
async def record_payment(inp: EnrollmentInput) -> int:
    await asyncio.sleep(0.3)
    return abs(hash(inp.checkout_session_id)) % 10_000


@activity.defn(name="create_account")
async def create_account(inp: EnrollmentInput) -> AccountResult:
    await asyncio.sleep(0.3)
    n = abs(hash(inp.checkout_session_id)) % 10_000
    return AccountResult(n, n, inp.email.split("@")[0], True)


@activity.defn(name="mark_enrolled")
async def mark_enrolled(ref: EnrollmentRef) -> None:
    await asyncio.sleep(0.2)


@activity.defn(name="provision_tool")
async def provision_tool(inp: ToolInput) -> ToolResult:
    await asyncio.sleep(0.5)
    if inp.tool == "prefect" and inp.checkout_session_id in BROKEN:
        raise ApplicationError(
            "prefect: 401 Unauthorized from http://prefect:4200/api (admin credentials refused)",
            type="ToolPermanentError",
            non_retryable=True,
        )
    return ToolResult(inp.tool, "ready", f"https://learn.example.com/{inp.tool}")


@activity.defn(name="flag_for_support")
async def flag_for_support(failure: ToolFailure) -> None:
    return None


@activity.defn(name="record_tool_decision")
async def record_tool_decision(inp: ToolInput, decision: Decision) -> None:
    return None


@activity.defn(name="unlock_first_project")
async def unlock_first_project(ref: EnrollmentRef) -> int:
    return 1


@activity.defn(name="send_welcome_email")
async def send_welcome_email(inp: WelcomeEmailInput) -> None:
    await asyncio.sleep(0.2)


@activity.defn(name="set_enrollment_status")
async def set_enrollment_status(inp: StatusInput) -> None:
    return None


@activity.defn(name="cancel_enrollment")
async def cancel_enrollment(inp: CancelInput) -> None:
    return None


STAND_INS = [
    record_payment,
    create_account,
    mark_enrolled,
    provision_tool,
    flag_for_support,
    record_tool_decision,
    unlock_first_project,
    send_welcome_email,
    set_enrollment_status,
    cancel_enrollment,
]


async def photograph(workflow_id: str, run_id: str) -> None:
    base = f"http://127.0.0.1:{UI_PORT}/namespaces/default/workflows"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1600, "height": 1000})
        await page.goto(f"{base}?query=NeedsAttention%20%3D%20true")
        await page.wait_for_timeout(4000)
        await page.screenshot(path=OUT / "needs-attention-list.png")
        await page.goto(f"{base}/{workflow_id}/{run_id}/history")
        await page.wait_for_timeout(5000)
        await page.get_by_text("User Metadata", exact=True).click()
        await page.wait_for_timeout(3000)
        await page.screenshot(path=OUT / "workflow-detail.png")
        await page.get_by_text("Search Attributes", exact=True).click()
        await page.wait_for_timeout(2000)
        await page.screenshot(path=OUT / "workflow-search-attributes.png")
        await browser.close()


async def main() -> None:
    flags = [f for k, v in SEARCH_ATTRIBUTES.items() for f in ("--search-attribute", f"{k}={v}")]
    server = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/temporal"),
        *("server", "start-dev", "--ip", "127.0.0.1", "--port", str(PORT)),
        *("--ui-port", str(UI_PORT), "--log-level", "error", *flags),
    )
    try:
        for _ in range(100):
            try:
                client = await Client.connect(f"127.0.0.1:{PORT}")
                break
            except RuntimeError:
                await asyncio.sleep(0.3)
        settings = Settings(
            _env_file=None, app_env="development", temporal_address=f"127.0.0.1:{PORT}"
        )
        async with Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=WORKFLOWS,
            activities=STAND_INS,
        ):
            stuck = ""
            for name, email, track, broken in PEOPLE:
                session_id = f"cs_test_a1{uuid.uuid4().hex[:28]}"
                if broken:
                    BROKEN.add(session_id)
                    stuck = session_id
                amount = 49_900 if track == "DP" else 59_900
                inp = EnrollmentInput(
                    session_id,
                    email,
                    name,
                    track,
                    amount=amount,
                    currency="usd",
                    source="webhook:checkout.session.completed",
                    options=enrollment_options(settings),
                )
                await start_enrollment(client, settings, inp)
            await asyncio.sleep(6)
            desc = await client.get_workflow_handle(workflow_id_for(stuck)).describe()
            await photograph(desc.id, desc.run_id or "")
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    asyncio.run(main())
