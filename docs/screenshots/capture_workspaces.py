"""Photograph a student's own JupyterLab (DP) and code-server (FSD), opened from the
dashboard of a running `make dev`, as a new buyer would: get started, pay on the sandbox's
hosted checkout, land on the dashboard, reveal the tool's secret, open the tool, sign in.

`make dev` in one terminal, then `.venv/bin/python docs/screenshots/capture_workspaces.py
[http://localhost:8000]`.
"""

import asyncio
import re
import sys
import uuid
from pathlib import Path

from playwright.async_api import Page, async_playwright

OUT = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SLOW = 300_000  # the first JupyterLab start on a busy machine


async def buy(page: Page, base: str, track: str, title: str) -> None:
    email = f"shot-{track.lower()}-{uuid.uuid4().hex[:6]}@example.com"
    await page.goto(f"{base}/get-started")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Full name").fill("Ada Lovelace")
    await page.get_by_role("button", name="Continue").click()
    await page.get_by_role("button", name=f"Enroll in {title}").click()
    await page.wait_for_url(re.compile(r"/c/pay/cs_test_"))
    await page.get_by_label("Card number").fill("4242 4242 4242 4242")
    await page.get_by_label("Expiration (MM / YY)").fill("12 / 34")
    await page.get_by_label("CVC").fill("123")
    await page.get_by_label("Name on card").fill("Ada Lovelace")
    await page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    await page.wait_for_url(re.compile(r"/student/dashboard$"), timeout=SLOW)


async def secret_of(page: Page, tool: str) -> str:
    await page.locator(f"#tool-{tool} form.reveal button").click()
    value = page.locator(f"#credentials-{tool} dd").nth(1)
    await value.wait_for()
    return (await value.inner_text()).strip()


async def main(base: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for track, title, tool, label in (
            ("DP", "Data Professional", "jupyter", "Jupyter"),
            ("FSD", "Full-Stack Developer", "codeserver", "code-server"),
        ):
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await buy(page, base, track, title)
            secret = await secret_of(page, tool)
            async with context.expect_page() as opened:
                await page.get_by_role("link", name=f"Open {label}").click(
                    modifiers=["ControlOrMeta"]
                )
            workspace = await opened.value
            await workspace.wait_for_load_state()
            # JupyterLab's login page also offers a token-to-password form: take the first.
            password = workspace.locator("input[type=password]").first
            await password.wait_for(timeout=SLOW)
            await password.fill(secret)
            await password.press("Enter")
            if tool == "jupyter":
                await workspace.wait_for_selector("#jp-main-dock-panel", timeout=SLOW)
            else:
                await workspace.wait_for_selector(".monaco-workbench", timeout=SLOW)
            await workspace.wait_for_timeout(4000)  # let the panels settle
            path = OUT / f"{tool}-from-dashboard.png"
            await workspace.screenshot(path=str(path))
            print(f"saved {path}")
            await context.close()
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000"))
