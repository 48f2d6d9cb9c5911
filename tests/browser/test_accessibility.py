"""Accessibility in Chromium: axe-core finds no serious or critical violation on any page,
pages read at 320 px without sideways scrolling, and the journey works from the keyboard."""

import re

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.pages.journey import enroll
from tests.utils.browser import AXE, PHONE, requires_chromium, screenshot
from tests.utils.stack import Stack

pytestmark = [pytest.mark.browser, requires_chromium]

SCANNED = [
    ("landing", "/"),
    ("get-started", "/get-started"),
    ("payment-success-unknown-session", "/payment/success?session_id=cs_test_doesnotexist0000"),
    ("payment-cancel", "/payment/cancel"),
    ("login", "/login"),
    ("forgot-password", "/forgot-password"),
    ("set-password", "/set-password?token=" + "t" * 43),
    ("not-found", "/no/such/page"),
]
BLOCKING = ("serious", "critical")


async def axe_violations(page: Page) -> list[dict]:
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice']}})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in result["violations"]
        if v["impact"] in BLOCKING
    ]


@pytest.fixture
def axe_available() -> None:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci` in tests/browser")


async def logged_in_context(browser: Browser, stack: Stack, **options: object) -> BrowserContext:
    """A browser context holding the cookies of a student who just paid (over HTTP)."""
    async with stack.http() as http:
        await enroll(stack, http, "axe@example.com", name="Ada Lovelace", track="DP")
        cookies = [
            {"name": c.name, "value": c.value, "url": stack.api_url}
            for c in http.cookies.jar
            if c.name in ("onramp_access", "onramp_csrf")
        ]
    ctx = await browser.new_context(base_url=stack.api_url, **options)  # type: ignore[arg-type]
    await ctx.add_cookies(cookies)  # type: ignore[arg-type]
    return ctx


class TestAxe:
    async def test_public_pages_have_no_serious_violations(
        self, fresh: Stack, browser: Browser, axe_available: None
    ) -> None:
        # Injecting axe is an inline script: only the scanning context bypasses the CSP.
        ctx = await browser.new_context(viewport=PHONE, base_url=fresh.api_url, bypass_csp=True)
        page = await ctx.new_page()
        found = {}
        for name, path in SCANNED:
            await page.goto(path)
            if name == "payment-success-unknown-session":
                await expect(page.locator("#problem")).to_be_visible(timeout=15_000)
            found[name] = await axe_violations(page)
            await screenshot(page, f"axe-{name}")
        # Step 2 of get started, and the form re-rendered with errors (no JavaScript path).
        await page.goto("/get-started")
        await page.get_by_label("Email").fill("ada@example.com")
        await page.get_by_label("Full name").fill("Ada")
        await page.get_by_role("button", name="Continue").click()
        found["get-started-step-2"] = await axe_violations(page)
        async with httpx.AsyncClient(base_url=fresh.api_url) as http:
            errors = await http.post("/get-started", data={"email": "x", "name": ""})
        await page.set_content(errors.text)
        found["get-started-errors"] = await axe_violations(page)
        await ctx.close()
        assert {k: v for k, v in found.items() if v} == {}

    async def test_dashboard_has_no_serious_violations(
        self, fresh: Stack, browser: Browser, axe_available: None
    ) -> None:
        ctx = await logged_in_context(browser, fresh, viewport=PHONE, bypass_csp=True)
        page = await ctx.new_page()
        await page.goto("/student/dashboard")
        await page.locator("#tool-superset form.reveal button").click()
        await expect(page.locator("#credentials-superset")).to_be_visible()
        violations = await axe_violations(page)
        await screenshot(page, "axe-dashboard")
        await ctx.close()
        assert violations == []


class TestSmallScreensAndKeyboard:
    async def test_pages_fit_320_px_without_sideways_scrolling(
        self, fresh: Stack, browser: Browser
    ) -> None:
        ctx = await logged_in_context(browser, fresh, viewport={"width": 320, "height": 640})
        page = await ctx.new_page()
        too_wide = {}
        for _, path in [*SCANNED, ("dashboard", "/student/dashboard")]:
            await page.goto(path)
            width = await page.evaluate("document.documentElement.scrollWidth")
            if width > 320:
                too_wide[path] = width
        await screenshot(page, "dashboard-320px")
        await ctx.close()
        assert too_wide == {}

    async def test_get_started_by_keyboard_alone(self, fresh: Stack, page: Page) -> None:
        await page.goto("/get-started")
        await page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to content")
        await expect(skip).to_be_focused()
        outline = await skip.evaluate("el => getComputedStyle(el).outlineStyle")
        assert outline != "none"  # focus is visible

        for _ in range(10):
            if await page.evaluate("document.activeElement.id") == "email":
                break
            await page.keyboard.press("Tab")
        await page.keyboard.type("keys@example.com")
        await page.keyboard.press("Tab")
        await page.keyboard.type("Kay Board")
        await page.keyboard.press("Enter")  # continues to step 2, moving focus there
        await expect(page.locator("#step-track-title")).to_be_focused()
        await expect(page.locator("#email-echo")).to_contain_text("keys@example.com")

        for _ in range(10):
            await page.keyboard.press("Tab")
            label = await page.evaluate("document.activeElement.textContent")
            if label == "Enroll in Full-Stack Developer":
                break
        assert label == "Enroll in Full-Stack Developer"
        await screenshot(page, "keyboard-get-started")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r"/c/pay/cs_test_"))

    async def test_inline_validation_messages(self, fresh: Stack, page: Page) -> None:
        await page.goto("/get-started")
        await page.get_by_role("button", name="Continue").click()
        email = page.get_by_label("Email")
        await expect(page.locator("#email-error")).to_have_text("Enter your email address.")
        await expect(email).to_have_attribute("aria-invalid", "true")
        await expect(email).to_be_focused()
        await email.fill("not-an-email")
        await page.get_by_label("Full name").fill("Val Idation")
        await expect(page.locator("#email-error")).to_contain_text("valid email address")
        await email.fill("val@example.com")
        await expect(page.locator("#email-error")).to_be_hidden()  # cleared while typing
        await expect(email).not_to_have_attribute("aria-invalid", "true")
        await page.get_by_role("button", name="Continue").click()
        await expect(page.locator("#email-echo")).to_contain_text("val@example.com")
        await screenshot(page, "inline-validation-fixed")
