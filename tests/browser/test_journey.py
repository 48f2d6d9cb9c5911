"""The whole student journey in Chromium: landing, get started, the sandbox's hosted
checkout, the live success page and the dashboard; plus the declined, cancel and
existing-account paths."""

import re

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from api.main import create_app
from core.tracks import TRACKS
from sandbox.server import BackgroundServer
from tests.pages.journey import CARD_DECLINED, CARD_OK, PASSWORD, create_user
from tests.utils.browser import requires_chromium, screenshot
from tests.utils.helpers import free_port
from tests.utils.stack import Stack

pytestmark = [pytest.mark.browser, requires_chromium]

LONG = 60_000  # enrollment runs the real workflow: allow for a slow machine
DASHBOARD = re.compile(r"^http://[^/?]+/student/dashboard$")


async def get_started(page: Page, email: str, name: str, track: str) -> None:
    """From the landing page to the sandbox's hosted checkout page."""
    await page.goto("/")
    await get_started_here(page, email, name, track)


async def get_started_here(page: Page, email: str, name: str, track: str) -> None:
    """From the landing page already open to the sandbox's hosted checkout page."""
    await page.get_by_role("link", name="Get Started Now").click()
    await expect(page).to_have_url(re.compile(r"/get-started$"))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Full name").fill(name)
    await page.get_by_role("button", name="Continue").click()
    # Step 2 shows the email back before any payment.
    await expect(page.locator("#email-echo")).to_contain_text(email)
    await screenshot(page, f"get-started-step-2-{track}")
    await page.get_by_role("button", name=f"Enroll in {TRACKS[track].title}").click()
    await page.wait_for_url(re.compile(r"/c/pay/cs_test_"))


async def pay(page: Page, card: str) -> None:
    await page.get_by_label("Card number").fill(card)
    await page.get_by_label("Expiration (MM / YY)").fill("12 / 34")
    await page.get_by_label("CVC").fill("123")
    await page.get_by_label("Name on card").fill("Ada Lovelace")
    await page.get_by_role("button", name=re.compile(r"^Pay ")).click()


async def auth_cookies(context: BrowserContext) -> dict[str, dict]:
    return {c["name"]: c for c in await context.cookies() if c["name"].startswith("onramp_")}


class TestJourney:
    @pytest.mark.parametrize("track", ["DP", "FSD"])
    async def test_payment_to_a_logged_in_dashboard(
        self, fresh: Stack, context: BrowserContext, page: Page, track: str
    ) -> None:
        email = f"ada.{track.lower()}@example.com"
        await get_started(page, email, "Ada Lovelace", track)
        await pay(page, CARD_OK)

        await page.wait_for_url(re.compile(r"/payment/success"))
        # The session id is read once, then taken out of the address bar.
        await page.wait_for_function("window.location.search === ''")
        steps = page.locator("#steps")
        await expect(steps).to_have_attribute("aria-live", "polite")
        await expect(steps.locator('li[data-key="account"]')).to_contain_text("Done", timeout=LONG)
        await expect(page.locator("#tools")).to_be_visible(timeout=LONG)
        await screenshot(page, f"journey-{track}-success")

        await page.wait_for_url(DASHBOARD, timeout=LONG)
        await expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Ada Lovelace")
        await expect(
            page.get_by_role("heading", name=f"{TRACKS[track].title} track")
        ).to_be_visible()
        await expect(page.locator(".projects .unlocked")).to_have_count(1)

        cookies = await auth_cookies(context)
        assert cookies["onramp_access"]["httpOnly"] is True
        assert cookies["onramp_refresh"]["httpOnly"] is True
        stored = await page.evaluate("localStorage.length + sessionStorage.length")
        assert stored == 0

        # Credentials on demand: fetched when asked, hidden again when asked.
        tool = TRACKS[track].tools[0]
        reveal = page.locator(f"#tool-{tool} form.reveal button")
        await reveal.click()
        await expect(reveal).to_have_attribute("aria-expanded", "true")
        await expect(page.locator(f"#credentials-{tool} dd").nth(1)).not_to_be_empty()
        await screenshot(page, f"journey-{track}-dashboard")
        await reveal.click()
        await expect(page.locator(f"#credentials-{tool}")).to_be_hidden()

    async def test_a_buyer_on_another_host_name_still_lands_logged_in(
        self, fresh: Stack, context: BrowserContext, page: Page
    ) -> None:
        """`make dev` says localhost; a newcomer types 127.0.0.1. The checkout cookie must
        be set on the origin Stripe sends the buyer back to, or a brand-new buyer is not
        logged in: pages move to PUBLIC_BASE_URL's origin before the checkout starts."""
        port = free_port()
        canonical = f"http://localhost:{port}"
        settings = fresh.settings.model_copy(update={"port": port, "public_base_url": canonical})
        with BackgroundServer(create_app(settings), port=port):
            await page.goto(f"http://127.0.0.1:{port}/")
            await expect(page).to_have_url(f"{canonical}/")
            await get_started_here(page, "newcomer@example.com", "New Comer", "FSD")
            await pay(page, CARD_OK)
            await page.wait_for_url(re.compile(rf"^{canonical}/payment/success"))
            await page.wait_for_url(re.compile(rf"^{canonical}/student/dashboard$"), timeout=LONG)
            await expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, New Comer")
        assert "onramp_access" in await auth_cookies(context)

    async def test_declined_card_stays_on_checkout_with_a_message(
        self, fresh: Stack, page: Page
    ) -> None:
        await get_started(page, "declined@example.com", "Dee Clined", "DP")
        await pay(page, CARD_DECLINED)
        await expect(page.get_by_role("alert")).to_contain_text("Your card was declined.")
        assert "/c/pay/cs_test_" in page.url
        await screenshot(page, "declined-card")

    async def test_expired_checkout_gets_a_human_message(self, fresh: Stack, page: Page) -> None:
        await get_started(page, "late@example.com", "Late Payer", "DP")
        session_id = page.url.rsplit("/", 1)[-1]
        async with httpx.AsyncClient() as stripe:
            expired = await stripe.post(
                f"{fresh.sandbox_url}/v1/checkout/sessions/{session_id}/expire",
                headers={"Authorization": f"Bearer {fresh.settings.stripe_api_key}"},
            )
            assert expired.status_code == 200, expired.text
        await page.goto(f"/payment/success?session_id={session_id}")
        await expect(page.get_by_role("heading", level=1)).to_have_text("This checkout has expired")
        await expect(page.locator("#summary")).to_contain_text("haven't been charged")
        await expect(page.get_by_role("link", name="Start again")).to_be_visible()
        await screenshot(page, "expired-checkout")

    async def test_cancel_returns_to_a_friendly_page(self, fresh: Stack, page: Page) -> None:
        await get_started(page, "cancel@example.com", "Can Celled", "FSD")
        await page.get_by_role("link", name="Cancel and return").click()
        await page.wait_for_url(re.compile(r"/payment/cancel$"))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Payment cancelled")
        support = page.locator("#main").get_by_role("link", name=fresh.settings.support_email)
        await expect(support).to_be_visible()
        await expect(page.get_by_role("link", name="Back to home")).to_be_visible()
        await screenshot(page, "cancel")
        await page.get_by_role("link", name="Try again").click()
        await page.wait_for_url(re.compile(r"/get-started$"))

    async def test_existing_email_is_offered_login_not_tokens(
        self, fresh: Stack, context: BrowserContext, page: Page
    ) -> None:
        create_user(fresh.engine, "grace@example.com", name="Grace Hopper")
        await get_started(page, "grace@example.com", "Grace Hopper", "FSD")
        await pay(page, CARD_OK)
        await page.wait_for_url(re.compile(r"/payment/success"))
        offer = page.locator("#next")
        await expect(offer).to_contain_text("already have an Onramp account", timeout=LONG)
        await expect(offer.get_by_role("link", name="Log in")).to_be_visible()
        assert "onramp_access" not in await auth_cookies(context)
        await screenshot(page, "existing-account-login-offered")

        await offer.get_by_role("link", name="Log in").click()
        await page.get_by_label("Email").fill("grace@example.com")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(DASHBOARD)
        await expect(page.get_by_role("heading", name="Full-Stack Developer track")).to_be_visible()
        await screenshot(page, "existing-account-dashboard")

        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url(re.compile(r"/$"))
        assert "onramp_access" not in await auth_cookies(context)

    async def test_expired_access_cookie_is_renewed_from_the_login_page(
        self, fresh: Stack, context: BrowserContext, page: Page
    ) -> None:
        create_user(fresh.engine, "grace@example.com", name="Grace Hopper")
        await page.goto("/login")
        await page.get_by_label("Email").fill("grace@example.com")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(DASHBOARD)
        # The 15-minute access cookie is gone; the refresh cookie (path /api/auth/) is not.
        await context.clear_cookies(name="onramp_access")
        await page.goto("/student/dashboard")
        await page.wait_for_url(DASHBOARD)
        await expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Grace Hopper")
        assert "onramp_access" in await auth_cookies(context)
        await screenshot(page, "renewed-login-dashboard")


class TestWithoutJavaScript:
    async def test_get_started_form_reaches_checkout(
        self, fresh: Stack, browser_without_js: Page
    ) -> None:
        page = browser_without_js
        await page.goto("/get-started")
        await page.get_by_label("Email").fill("nojs@example.com")
        await page.get_by_label("Full name").fill("No Script")
        await page.get_by_label("Email").press("Enter")  # Enter continues, never buys
        await expect(page.locator("#email-echo")).to_contain_text("nojs@example.com")
        await page.get_by_role("button", name="Enroll in Data Professional").click()
        await page.wait_for_url(re.compile(r"/c/pay/cs_test_"))
        await expect(page.get_by_label("Email")).to_have_value("nojs@example.com")
        await screenshot(page, "no-javascript-checkout")
