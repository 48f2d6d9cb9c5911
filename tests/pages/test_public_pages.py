"""Every page renders for a visitor, fits the 50 KB budget and has nothing the CSP blocks."""

import pytest

from tests.pages.journey import PAGES, scripts_and_styles, unsafe_markup
from tests.utils.stack import Stack

BUDGET = 50 * 1024
HTML = {"Accept": "text/html"}


class TestPublicPages:
    @pytest.mark.parametrize("path", PAGES)
    async def test_page_renders_within_budget(self, fresh: Stack, path: str) -> None:
        async with fresh.http() as http:
            page = await http.get(path, headers=HTML)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert '<html lang="en">' in page.text and "<title>" in page.text
            assets = scripts_and_styles(page.text)
            assert any(a.startswith("/static/app.css") for a in assets)
            total = len(page.content)
            for asset in assets:
                r = await http.get(asset)
                assert r.status_code == 200, asset
                total += len(r.content)
        assert total < BUDGET, f"{path}: {total} bytes on first load"

    @pytest.mark.parametrize("path", PAGES)
    async def test_nothing_inline_for_the_csp_to_block(self, fresh: Stack, path: str) -> None:
        async with fresh.http() as http:
            page = await http.get(path, headers=HTML)
        assert unsafe_markup(page.text) == []
        assert "default-src 'self'" in page.headers["content-security-policy"]

    async def test_landing_shows_both_tracks_and_the_way_in(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get("/")
        text = page.text
        assert "Data Professional" in text and "Full-Stack Developer" in text
        assert "$499" in text and "$599" in text
        assert 'href="/get-started">Get Started Now</a>' in text

    async def test_cancel_page_offers_retry_home_and_support(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get("/payment/cancel")
        assert page.status_code == 200
        assert 'href="/get-started">Try again</a>' in page.text
        assert 'href="/">Back to home</a>' in page.text
        assert f"mailto:{fresh.settings.support_email}" in page.text

    async def test_unknown_page_is_a_human_404(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get("/no/such/page", headers=HTML)
            api = await http.get("/api/no/such/endpoint", headers=HTML)
            machine = await http.get("/no/such/page", headers={"Accept": "application/json"})
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "Page not found" in page.text and "Traceback" not in page.text
        assert api.status_code == 404 and api.json()["error"] == "Not Found"
        assert machine.status_code == 404 and machine.json()["error"] == "Not Found"

    async def test_a_trailing_slash_redirects_to_the_page(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            r = await http.get("/get-started/", params={"track": "DP"}, headers=HTML)
        assert r.status_code == 308 and r.headers["location"] == "/get-started?track=DP"

    async def test_static_files_and_api_routes_are_not_shadowed(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            css = await http.get("/static/app.css")
            health = await http.get("/api/health")
            docs = await http.get("/openapi.json")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert health.status_code in (200, 503) and "database" in health.json()
        assert docs.status_code == 200
