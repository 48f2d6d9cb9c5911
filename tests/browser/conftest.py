"""Fixtures of the browser tests; their stack and helpers are in `tests/utils/browser.py`."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.utils.browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    PHONE,
)
from tests.utils.helpers import require
from tests.utils.stack import Stack


@pytest.fixture(scope="session")
def chromium() -> Path:
    require(
        CHROMIUM.exists(),
        f"Debian's Chromium at {CHROMIUM}",
        "`make system-deps` installs it (apt-get install -y chromium chromium-driver)",
    )
    return CHROMIUM


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real Chromium through Playwright")


@pytest_asyncio.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def context(browser: Browser, fresh: Stack) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport=PHONE, base_url=fresh.api_url)
    ctx.set_default_timeout(15_000)
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page that records what the browser refused (CSP) or failed to run."""
    tab = await context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    tab.problems = problems  # type: ignore[attr-defined]
    yield tab
    assert problems == [], problems


@pytest_asyncio.fixture
async def browser_without_js(browser: Browser, fresh: Stack) -> AsyncIterator[Page]:
    ctx = await browser.new_context(
        viewport=PHONE, base_url=fresh.api_url, java_script_enabled=False
    )
    ctx.set_default_timeout(15_000)
    yield await ctx.new_page()
    await ctx.close()
