"""The success page in Chromium follows the enrollment's event stream: each step as it
completes, no verify-session polling while the stream is open, verify-session once at the
end; and polling again when the stream is refused."""

import re

import pytest
from playwright.async_api import BrowserContext, Page, Request, Route, expect

from tests.browser.test_journey import DASHBOARD, LONG, get_started, pay
from tests.pages.journey import CARD_OK
from tests.utils.browser import requires_chromium
from tests.utils.stack import Stack

pytestmark = [pytest.mark.browser, requires_chromium]

STEP_WATCH = """
document.addEventListener("DOMContentLoaded", () => {
  const steps = document.getElementById("steps");
  if (!steps) return;
  new MutationObserver(() => {
    for (const li of steps.children) {
      const state = li.querySelector(".state");
      if (state) window.recordStep(li.dataset.key + "=" + state.textContent);
    }
  }).observe(steps, { childList: true, subtree: true });
});
"""


def api_calls(page: Page) -> list[str]:
    seen: list[str] = []

    def record(request: Request) -> None:
        path = request.url.split("?", 1)[0]
        if "/api/payments/verify-session/" in path or "/api/payments/progress-stream/" in path:
            seen.append(path.rsplit("/", 2)[-2])

    page.on("request", record)
    return seen


async def test_steps_arrive_through_the_stream_without_polling(
    fresh: Stack, context: BrowserContext, page: Page
) -> None:
    marks: list[str] = []
    await page.expose_function("recordStep", lambda mark: marks.append(mark))
    await context.add_init_script(STEP_WATCH)
    calls = api_calls(page)
    await get_started(page, "stream@example.com", "Ada Lovelace", "DP")
    await pay(page, CARD_OK)
    await page.wait_for_url(re.compile(r"/payment/success"))
    await page.wait_for_url(DASHBOARD, timeout=LONG)
    # Every step was shown done on the page as it completed.
    for key in ("payment", "account", "tool:postgres", "tool:superset", "project", "email"):
        assert f"{key}=Done" in marks, (key, marks)
    # One stream, then verify-session exactly once (it logged this browser in).
    assert calls == ["progress-stream", "verify-session"], calls
    assert any(c["name"] == "onramp_access" for c in await context.cookies())


async def test_a_refused_stream_falls_back_to_verify_session(
    fresh: Stack, context: BrowserContext, page: Page
) -> None:
    async def refuse(route: Route) -> None:
        await route.fulfill(
            status=429,
            content_type="application/json",
            body='{"error": "Too many streams", "message": "poll instead"}',
        )

    await page.route(re.compile(r"/api/payments/progress-stream/"), refuse)
    calls = api_calls(page)
    await get_started(page, "fallback@example.com", "Ada Lovelace", "DP")
    await pay(page, CARD_OK)
    await page.wait_for_url(re.compile(r"/payment/success"))
    steps = page.locator("#steps")
    await expect(steps.locator('li[data-key="account"]')).to_contain_text("Done", timeout=LONG)
    await page.wait_for_url(DASHBOARD, timeout=LONG)
    assert calls[0] == "progress-stream" and calls.count("verify-session") >= 1, calls
    assert any(c["name"] == "onramp_access" for c in await context.cookies())
