"""The one-time login after payment: only the paying browser, only a new account, only once,
only within the window. Everyone else gets the enrollment state and `login_required`."""

import asyncio
from datetime import timedelta

import sqlalchemy as sa

from core.models import utcnow
from tests.utils.security import (
    PASSWORD,
    browser,
    login,
    make_user,
    paid_enrollment,
    row_counts,
    start_checkout,
    wait_enrollment_ready,
    wait_verified,
)
from tests.utils.stack import Stack

AUTH_COOKIES = ("onramp_access", "onramp_refresh", "onramp_csrf")


def assert_no_tokens(body: dict[str, object], cookies: object) -> None:
    assert body["login_required"] is True
    assert body.get("access") is None and body.get("refresh") is None
    assert not any(name in cookies for name in AUTH_COOKIES)  # type: ignore[operator]


def refresh_tokens(stack: Stack) -> int:
    return row_counts(stack.engine)["refresh_token"]


async def test_paying_browser_is_logged_in_once(fresh: Stack) -> None:
    async with browser(fresh) as payer:
        session_id = await paid_enrollment(fresh, payer, "first.payer@example.com")
        nonce = payer.cookies["onramp_checkout"]
        response = await wait_verified(payer, session_id)
        body = response.json()
        assert body["login_required"] is False
        assert body["access"] and body["refresh"]
        set_cookies = response.headers.get_list("set-cookie")
        access_cookie = next(c for c in set_cookies if c.startswith("onramp_access="))
        assert "HttpOnly" in access_cookie and "samesite=lax" in access_cookie.lower()
        assert any(c.startswith("onramp_checkout=") and "Max-Age=0" in c for c in set_cookies)
        me = await payer.get("/api/auth/me")
        assert me.status_code == 200 and me.json()["email"] == "first.payer@example.com"
        assert refresh_tokens(fresh) == 1

        # The same page reloaded, even with the nonce cookie put back: no second login.
        payer.cookies.clear()
        payer.cookies.set("onramp_checkout", nonce)
        again = await payer.get("/api/payments/verify-session/", params={"session_id": session_id})
        assert again.status_code == 200
        assert_no_tokens(again.json(), payer.cookies)
        assert refresh_tokens(fresh) == 1


async def test_other_browsers_get_no_tokens(fresh: Stack) -> None:
    async with browser(fresh) as payer, browser(fresh) as stranger, browser(fresh) as other_payer:
        session_id = await paid_enrollment(fresh, payer, "owner.browser@example.com")
        await wait_enrollment_ready(fresh, session_id)
        # No nonce at all.
        response = await stranger.get(
            "/api/payments/verify-session/", params={"session_id": session_id}
        )
        assert response.status_code == 200
        assert_no_tokens(response.json(), stranger.cookies)
        # A real nonce, from another checkout.
        await start_checkout(other_payer, "someone.else@example.com")
        response = await other_payer.get(
            "/api/payments/verify-session/", params={"session_id": session_id}
        )
        assert response.status_code == 200
        assert_no_tokens(response.json(), other_payer.cookies)
        # A forged nonce.
        stranger.cookies.set("onramp_checkout", "forged-nonce-value")
        response = await stranger.get(
            "/api/payments/verify-session/", params={"session_id": session_id}
        )
        assert_no_tokens(response.json(), {})
        assert refresh_tokens(fresh) == 0

        # None of that spent the login of the browser that paid.
        response = await payer.get(
            "/api/payments/verify-session/", params={"session_id": session_id}
        )
        assert response.json()["login_required"] is False
        assert refresh_tokens(fresh) == 1


async def test_no_tokens_after_the_window(fresh: Stack) -> None:
    async with browser(fresh) as payer:
        session_id = await paid_enrollment(fresh, payer, "too.late@example.com")
        await wait_enrollment_ready(fresh, session_id)
        window = fresh.settings.auto_login_window_minutes
        with fresh.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE enrollment SET completed_at = :t WHERE checkout_session_id = :s"),
                {"t": utcnow() - timedelta(minutes=window, seconds=5), "s": session_id},
            )
        response = await payer.get(
            "/api/payments/verify-session/", params={"session_id": session_id}
        )
        assert response.status_code == 200
        assert_no_tokens(response.json(), payer.cookies)
        assert refresh_tokens(fresh) == 0


async def test_existing_account_never_gets_tokens_and_owner_is_told(fresh: Stack) -> None:
    make_user(fresh.engine, "owner@example.com", name="Real Owner")
    # The same address in another case is the same account.
    async with browser(fresh) as payer:
        session_id = await paid_enrollment(fresh, payer, "Owner@Example.COM")
        response = await wait_verified(payer, session_id)
        body = response.json()
        assert_no_tokens(body, payer.cookies)
        assert body["user"]["email"] == "owner@example.com"
    counts = row_counts(fresh.engine)
    assert counts["user"] == 1 and counts["refresh_token"] == 0
    assert counts["set_password_token"] == 0  # no password link for an account with one
    message = fresh.mail.wait_for(lambda m: "owner@example.com" in m["To"], timeout=30)
    assert "existing account" in (message.text or "")
    assert "set-password" not in (message.text or "")
    # The owner's password still works, and only the owner's.
    async with browser(fresh) as owner:
        await login(owner, "owner@example.com", PASSWORD)


async def test_script_in_name_is_escaped_in_the_welcome_email(fresh: Stack) -> None:
    name = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    async with browser(fresh) as payer:
        session_id = await paid_enrollment(fresh, payer, "script.kiddie@example.com", name=name)
        await wait_verified(payer, session_id)
    message = fresh.mail.wait_for(lambda m: "script.kiddie@example.com" in m["To"], timeout=30)
    html = message.html or ""
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html


async def test_concurrent_calls_from_the_paying_browser_log_in_once(fresh: Stack) -> None:
    async with browser(fresh) as payer:
        session_id = await paid_enrollment(fresh, payer, "racer@example.com")
        await wait_enrollment_ready(fresh, session_id)
        nonce = payer.cookies["onramp_checkout"]
        calls = [browser(fresh) for _ in range(6)]
        for call in calls:
            call.cookies.set("onramp_checkout", nonce)
        responses = await asyncio.gather(
            *(
                c.get("/api/payments/verify-session/", params={"session_id": session_id})
                for c in calls
            )
        )
        for call in calls:
            await call.aclose()
    assert all(r.status_code == 200 for r in responses)
    assert sum(r.json()["login_required"] is False for r in responses) == 1
    assert refresh_tokens(fresh) == 1
