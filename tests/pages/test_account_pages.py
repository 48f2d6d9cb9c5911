"""Log in, log out and set password as plain forms (the pages' no-JavaScript path)."""

from tests.pages.journey import PASSWORD, cookie, create_user, set_password_link
from tests.utils.stack import Stack


class TestLogin:
    async def test_form_logs_in_and_goes_to_the_next_page(self, fresh: Stack) -> None:
        create_user(fresh.engine, "grace@example.com")
        async with fresh.http() as http:
            r = await http.post(
                "/login",
                data={
                    "email": "Grace@Example.com",
                    "password": PASSWORD,
                    "next": "/student/dashboard",
                },
            )
            assert r.status_code == 303 and r.headers["location"] == "/student/dashboard"
            assert cookie(http, "onramp_access") and cookie(http, "onramp_csrf")
            dashboard = await http.get("/student/dashboard")
            login_again = await http.get("/login")
        assert dashboard.status_code == 200 and "Welcome, Grace Hopper" in dashboard.text
        assert login_again.status_code == 303  # already logged in

    async def test_wrong_password_rerenders_with_a_message(self, fresh: Stack) -> None:
        create_user(fresh.engine, "grace@example.com")
        async with fresh.http() as http:
            r = await http.post(
                "/login", data={"email": "grace@example.com", "password": "nope nope nope"}
            )
        assert r.status_code == 401
        assert "don&#39;t match" in r.text and 'value="grace@example.com"' in r.text
        assert cookie(http, "onramp_access") is None

    async def test_next_is_never_another_site(self, fresh: Stack) -> None:
        create_user(fresh.engine, "grace@example.com")
        async with fresh.http() as http:
            page = await http.get("/login", params={"next": "//evil.example/x"})
            r = await http.post(
                "/login",
                data={
                    "email": "grace@example.com",
                    "password": PASSWORD,
                    "next": "https://evil.example",
                },
            )
        assert "evil.example" not in page.text
        assert r.status_code == 303 and r.headers["location"] == "/student/dashboard"


class TestLogout:
    async def test_needs_the_csrf_token_then_ends_the_login(self, fresh: Stack) -> None:
        create_user(fresh.engine, "grace@example.com")
        async with fresh.http() as http:
            await http.post("/login", data={"email": "grace@example.com", "password": PASSWORD})
            forged = await http.post("/logout", data={})
            assert forged.status_code == 403
            assert (await http.get("/student/dashboard")).status_code == 200
            page = await http.get("/student/dashboard")
            token = cookie(http, "onramp_csrf")
            assert f'name="csrf_token" value="{token}"' in page.text
            r = await http.post("/logout", data={"csrf_token": token})
            assert r.status_code == 303 and r.headers["location"] == "/"
            after = await http.get("/student/dashboard")
        assert after.status_code == 303


class TestSetPassword:
    async def test_page_keeps_the_token_out_of_referrers_and_caches(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get("/set-password", params={"token": "x" * 43})
            bare = await http.get("/set-password")
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert 'type="hidden" name="token"' in page.text
        assert "This link is incomplete" in bare.text

    async def test_form_sets_the_password_and_logs_in(self, fresh: Stack) -> None:
        user_id = create_user(fresh.engine, "grace@example.com")
        token = set_password_link(fresh.engine, user_id)
        new = "a brand new passphrase"
        async with fresh.http() as http:
            mismatch = await http.post(
                "/set-password", data={"token": token, "password": new, "password2": "other"}
            )
            weak = await http.post(
                "/set-password", data={"token": token, "password": "short", "password2": "short"}
            )
            r = await http.post(
                "/set-password", data={"token": token, "password": new, "password2": new}
            )
            assert r.status_code == 303 and r.headers["location"] == "/student/dashboard"
            assert cookie(http, "onramp_access")
            reused = await http.post(
                "/set-password", data={"token": token, "password": new, "password2": new}
            )
        assert mismatch.status_code == 400 and "don&#39;t match" in mismatch.text
        assert weak.status_code == 400 and "at least" in weak.text
        assert reused.status_code == 400 and "Ask for a new link" in reused.text
