"""Playwright (Python, async) driving Debian's Chromium against the shared test stack."""

import re
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.utils.helpers import ROOT

CHROMIUM = Path("/usr/bin/chromium")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


AXE = Path(__file__).resolve().parents[1] / "browser" / "node_modules" / "axe-core" / "axe.min.js"


SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


PHONE = {"width": 390, "height": 844}


requires_chromium = pytest.mark.usefixtures("chromium")


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
