"""Cohorts in Chromium: the track cards' next cohort and seats left, the sold-out card that
takes a waitlist place, a checkout that finds its cohort full meanwhile, and a waitlist
offer's personal link down to Stripe's page. axe-core finds no serious violation on any."""

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from core.cohorts import service as cohorts
from tests.browser.test_accessibility import axe_violations
from tests.cohorts.conftest import expire_holds_now, make_cohort, offer_token, set_state
from tests.utils.browser import PHONE, requires_chromium, screenshot
from tests.utils.stack import Stack

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest_asyncio.fixture
async def page(browser: Browser, fresh: Stack) -> AsyncIterator[Page]:
    """A phone-sized page that lets axe-core in (its script is injected inline), recording
    any script error of ours."""
    ctx = await browser.new_context(viewport=PHONE, base_url=fresh.api_url, bypass_csp=True)
    ctx.set_default_timeout(15_000)
    tab = await ctx.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    yield tab
    await ctx.close()
    assert errors == []


CHECKOUT = "/api/payments/create-anonymous-checkout/"
SEED_DP = "DP-2027-01"


async def details(page: Page, email: str, name: str = "Grace Hopper") -> None:
    await page.goto("/get-started")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Full name").fill(name)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#email-echo")).to_contain_text(email)


async def test_cards_show_the_next_cohort_and_seats_left(fresh: Stack, page: Page) -> None:
    make_cohort(fresh.engine, "DP-B1", size=12)
    await details(page, "cards@example.com")
    dp = page.locator("#cohort-DP")
    await expect(dp).to_contain_text("Next cohort starts")
    await expect(dp).to_contain_text("12 seats left")
    await expect(page.locator("#cohort-FSD")).to_contain_text("18 January 2027")
    await screenshot(page, "get-started-cohort-cards")
    assert await axe_violations(page) == []


async def test_a_sold_out_card_takes_a_waitlist_place(fresh: Stack, page: Page) -> None:
    make_cohort(fresh.engine, "DP-B2", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    async with fresh.http() as http:
        r = await http.post(
            CHECKOUT, json={"email": "first@example.com", "name": "First", "track": "DP"}
        )
        assert r.status_code == 200
    await details(page, "second@example.com")
    await expect(page.locator("#cohort-DP")).to_contain_text("Sold out")
    await page.get_by_role("button", name="Join the Data Professional waitlist").click()
    status = page.locator("#form-status")
    await expect(status).to_contain_text("You're on the waitlist for cohort DP-B2, place 1")
    await screenshot(page, "get-started-waitlist-joined")
    assert await axe_violations(page) == []
    fresh.mail.wait_for(lambda m: "second@example.com" in m["To"], timeout=10)


async def test_a_checkout_that_finds_the_cohort_full_offers_the_waitlist(
    fresh: Stack, page: Page
) -> None:
    make_cohort(fresh.engine, "DP-B3", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    await details(page, "slow@example.com")
    await expect(page.locator("#cohort-DP")).to_contain_text("1 seat left")
    async with fresh.http() as http:  # someone else takes the last seat meanwhile
        r = await http.post(
            CHECKOUT, json={"email": "fast@example.com", "name": "Fast", "track": "DP"}
        )
        assert r.status_code == 200
    await page.get_by_role("button", name="Enroll in Data Professional").click()
    await expect(page.locator("#form-error")).to_contain_text("Cohort DP-B3 is sold out")
    await page.get_by_role("button", name="Join the waitlist").click()
    await expect(page.locator("#form-status")).to_contain_text("place 1")
    assert await axe_violations(page) == []


async def test_the_offer_link_leads_to_the_held_seat(fresh: Stack, page: Page) -> None:
    make_cohort(fresh.engine, "DP-B4", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    buyer = {"name": "Waiting Person", "track": "DP"}
    async with fresh.http() as http:
        first = await http.post(CHECKOUT, json={**buyer, "email": "gone@example.com"})
        joined = await http.post(
            "/api/payments/waitlist/", json={**buyer, "email": "w@example.com"}
        )
        assert joined.status_code == 201
    expire_holds_now(fresh.engine, [first.json()["sessionId"]])
    assert cohorts.sweep(fresh.engine, fresh.settings).offers == 1
    token = offer_token(fresh, "w@example.com")
    await page.goto(f"/get-started?track=DP&offer={token}")
    await expect(page.locator("#offer-notice")).to_contain_text("A seat is held for you")
    await expect(page.get_by_label("Email")).to_have_value("w@example.com")
    await screenshot(page, "get-started-waitlist-offer")
    assert await axe_violations(page) == []
    # The details are the offer's: straight to step 2, where the card pays the held seat.
    await page.get_by_role("button", name="Enroll in Data Professional").click()
    await page.wait_for_url(re.compile(r"/c/pay/cs_test_"))

    await page.goto("/get-started?track=DP&offer=" + "x" * 43)
    await expect(page.locator("#offer-notice")).to_contain_text("can't be used")
    assert await axe_violations(page) == []
