"""Login, cookies and CSRF, password links (welcome and reset), and the staff role."""

import asyncio
import re
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from sqlmodel import Session

from api.auth.deps import CurrentUser, OptionalUser, StaffUser, staff_user
from api.errors import AppError
from api.main import create_app
from core.accounts.service import create_staff_user
from core.models import Role
from tests.utils.helpers import wait_until
from tests.utils.security import (
    PASSWORD,
    assert_error,
    browser,
    login,
    make_password_link,
    make_user,
    row_counts,
)
from tests.utils.stack import Stack

NEW_PASSWORD = "a brand new passphrase 42"


def csrf_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return {"X-CSRF-Token": client.cookies["onramp_csrf"]}


# ---- login ---------------------------------------------------------------------------


async def test_login_sets_hardened_cookies(fresh: Stack) -> None:
    make_user(fresh.engine, "cookie@example.com")
    async with browser(fresh) as client:
        response = await client.post(
            "/api/auth/login", json={"email": " Cookie@EXAMPLE.com ", "password": PASSWORD}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["user"]["email"] == "cookie@example.com" and body["token_type"] == "bearer"
        assert response.headers["cache-control"] == "no-store"
        cookies = {c.split("=", 1)[0]: c.lower() for c in response.headers.get_list("set-cookie")}
        assert "httponly" in cookies["onramp_access"] and "samesite=lax" in cookies["onramp_access"]
        assert "httponly" in cookies["onramp_refresh"]
        assert "samesite=strict" in cookies["onramp_refresh"]
        assert "path=/api/auth/" in cookies["onramp_refresh"]
        assert "httponly" not in cookies["onramp_csrf"]  # the pages must read it
        me = await client.get("/api/auth/me")  # a GET needs no CSRF token
        assert me.status_code == 200 and me.json()["username"]


async def test_failed_logins_all_look_the_same(fresh: Stack) -> None:
    make_user(fresh.engine, "known@example.com")
    make_user(fresh.engine, "nopassword@example.com", password=None)
    disabled = make_user(fresh.engine, "disabled@example.com")
    with fresh.engine.begin() as conn:
        conn.execute(sa.text('UPDATE "user" SET is_active = false WHERE id = :i'), {"i": disabled})
    attempts = [
        ("known@example.com", "wrong password 123"),
        ("unknown@example.com", PASSWORD),
        ("nopassword@example.com", PASSWORD),
        ("disabled@example.com", PASSWORD),
    ]
    async with browser(fresh) as client:
        bodies = []
        for email, password in attempts:
            response = await client.post(
                "/api/auth/login", json={"email": email, "password": password}
            )
            bodies.append(assert_error(response, 401))
            assert not response.headers.get_list("set-cookie")
    assert all(b == bodies[0] for b in bodies)
    assert row_counts(fresh.engine)["refresh_token"] == 0


@pytest.mark.parametrize(
    "email",
    [
        "gr\u0430ce@example.com",  # Cyrillic a
        "grace@ex\u0430mple.com",
        "grace@example.com\u200b",  # zero-width space
        "ｇrace@example.com",  # fullwidth g
        "not-an-email",
        "",
    ],
)
async def test_look_alike_emails_are_refused(fresh: Stack, email: str) -> None:
    make_user(fresh.engine, "grace@example.com")
    async with browser(fresh) as client:
        for path, body in [
            ("/api/auth/login", {"email": email, "password": PASSWORD}),
            ("/api/auth/forgot-password", {"email": email}),
            (
                "/api/payments/create-anonymous-checkout/",
                {"email": email, "name": "Grace", "track": "DP"},
            ),
        ]:
            assert_error(await client.post(path, json=body), 400)
    counts = row_counts(fresh.engine)
    assert counts["user"] == 1 and counts["refresh_token"] == 0 and counts["enrollment"] == 0


# ---- CSRF on cookie sessions ---------------------------------------------------------


async def test_cookie_requests_that_change_state_need_the_csrf_token(fresh: Stack) -> None:
    make_user(fresh.engine, "csrf@example.com")
    async with browser(fresh) as client:
        await login(client, "csrf@example.com")
        token = client.cookies["onramp_csrf"]
        refused = [
            {},
            {"X-CSRF-Token": ""},
            {"X-CSRF-Token": token[:-2] + "xx"},
            {"X-CSRF-Token": token, "Origin": "https://evil.example"},
            {"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
        ]
        for headers in refused:
            for path in ("/api/auth/logout", "/api/auth/refresh"):
                body = assert_error(await client.post(path, headers=headers), 403)
                assert body["error"] == "CSRF check failed"
        assert (await client.get("/api/auth/me")).status_code == 200  # still logged in
        assert row_counts(fresh.engine)["refresh_token"] == 1

        refreshed = await client.post("/api/auth/refresh", headers=csrf_headers(client))
        assert refreshed.status_code == 200
        assert (await client.get("/api/auth/me")).status_code == 200
        out = await client.post("/api/auth/logout", headers=csrf_headers(client))
        assert out.status_code == 200
        assert "onramp_access" not in client.cookies and "onramp_csrf" not in client.cookies


async def test_a_planted_csrf_cookie_from_another_login_does_not_pass(fresh: Stack) -> None:
    make_user(fresh.engine, "victim2@example.com")
    make_user(fresh.engine, "attacker2@example.com")
    async with browser(fresh) as attacker, browser(fresh) as victim:
        await login(attacker, "attacker2@example.com")
        await login(victim, "victim2@example.com")
        planted = attacker.cookies["onramp_csrf"]
        victim.cookies.set("onramp_csrf", planted, domain="127.0.0.1", path="/")
        response = await victim.post("/api/auth/logout", headers={"X-CSRF-Token": planted})
        assert_error(response, 403)
        assert (await victim.get("/api/auth/me")).status_code == 200


async def test_bearer_requests_need_no_csrf_token(fresh: Stack) -> None:
    make_user(fresh.engine, "bearer@example.com")
    async with browser(fresh) as client:
        pair = await login(client, "bearer@example.com")
        response = await client.post(
            "/api/auth/logout", headers={"Authorization": f"Bearer {pair['access']}"}
        )
        assert response.status_code == 200
    async with browser(fresh) as api_client:
        response = await api_client.get(
            "/api/auth/me", headers={"Authorization": f"Bearer {pair['access']}"}
        )
        assert_error(response, 401)


def probe_app(stack: Stack) -> FastAPI:
    """The real app plus two probe routes, served in-process (no lifespan: engine set here)."""
    app = create_app(stack.settings)
    app.state.engine = stack.engine

    async def staff_only(user: StaffUser) -> dict[str, str]:
        return {"email": user.email}

    async def form_post(request: Request, user: CurrentUser) -> dict[str, str]:
        form = await request.form()
        return {"email": user.email, "note": str(form.get("note"))}

    async def maybe_user(user: OptionalUser) -> dict[str, str | None]:
        return {"email": user.email if user else None}

    # Ahead of the pages' catch-all route.
    app.router.routes.insert(0, APIRoute("/api/probe/staff", staff_only, methods=["GET"]))
    app.router.routes.insert(0, APIRoute("/probe/form", form_post, methods=["POST"]))
    app.router.routes.insert(0, APIRoute("/probe/optional", maybe_user, methods=["POST"]))
    return app


async def test_forms_carry_the_csrf_token_in_a_field(fresh: Stack) -> None:
    make_user(fresh.engine, "former@example.com")
    async with browser(fresh) as real:
        await login(real, "former@example.com")
        cookies = dict(real.cookies)
    transport = httpx.ASGITransport(app=probe_app(fresh))
    async with httpx.AsyncClient(
        transport=transport, base_url=fresh.settings.public_base_url, cookies=cookies
    ) as client:
        refused = await client.post("/probe/form", data={"note": "hi"})
        assert_error(refused, 403)
        accepted = await client.post(
            "/probe/form", data={"note": "hi", "csrf_token": cookies["onramp_csrf"]}
        )
        assert accepted.status_code == 200 and accepted.json()["note"] == "hi"
        # Where a visitor is welcome too, a post without the proof is served as a visitor's.
        anonymous = await client.post("/probe/optional", data={"note": "hi"})
        assert anonymous.status_code == 200 and anonymous.json() == {"email": None}
        known = await client.post("/probe/optional", data={"csrf_token": cookies["onramp_csrf"]})
        assert known.json() == {"email": "former@example.com"}


# ---- staff ---------------------------------------------------------------------------


async def test_staff_only_routes_refuse_students(fresh: Stack) -> None:
    with Session(fresh.engine) as db:
        create_staff_user(db, "Staff@Example.com", "Sam Staff", "staff passphrase 99")
        with pytest.raises(AppError) as dup:
            create_staff_user(db, "staff@example.com", "Again", "staff passphrase 99")
        assert dup.value.status_code == 409
        with pytest.raises(AppError) as weak:
            create_staff_user(db, "weak@example.com", "Weak", "short")
        assert weak.value.status_code == 400
        db.commit()
    make_user(fresh.engine, "student@example.com")
    async with browser(fresh) as s, browser(fresh) as t:
        staff = await login(s, "staff@example.com", "staff passphrase 99")
        assert staff["user"]["role"] == Role.STAFF
        student = await login(t, "student@example.com")
    app = probe_app(fresh)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=fresh.settings.public_base_url
    ) as client:
        probe = "/api/probe/staff"
        assert_error(await client.get(probe), 401)
        student_auth = {"Authorization": f"Bearer {student['access']}"}
        assert_error(await client.get(probe, headers=student_auth), 403)
        staff_auth = {"Authorization": f"Bearer {staff['access']}"}
        assert (await client.get(probe, headers=staff_auth)).status_code == 200

    # Every staff-only route of the real app, whoever adds it, refuses a student.
    async with browser(fresh) as client:
        for route in create_app(fresh.settings).routes:
            if not isinstance(route, APIRoute) or not _depends_on(route, staff_user):
                continue
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            method = sorted(route.methods or ["GET"])[0]
            body: dict[str, object] | None = None if method in ("GET", "DELETE") else {}
            response = await client.request(method, path, headers=student_auth, json=body)
            assert_error(response, 403)


def _depends_on(route: APIRoute, target: object) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is target:
            return True
        stack.extend(dep.dependencies)
    return False


# ---- password links ------------------------------------------------------------------


async def test_set_password_spends_the_link_once_and_ends_other_logins(fresh: Stack) -> None:
    user_id = make_user(fresh.engine, "linked@example.com")
    link = make_password_link(fresh.engine, user_id)
    async with browser(fresh) as old, browser(fresh) as client:
        old_pair = await login(old, "linked@example.com")
        weak = await client.post(
            "/api/auth/set-password", json={"token": link, "password": "linked@example.com"}
        )
        assert assert_error(weak, 400)["error"] == "Weak password"
        response = await client.post(
            "/api/auth/set-password", json={"token": link, "password": NEW_PASSWORD}
        )
        assert response.status_code == 200 and response.json()["access"]
        assert "onramp_access" in client.cookies
        assert (await client.get("/api/auth/me")).status_code == 200
        again = await client.post(
            "/api/auth/set-password", json={"token": link, "password": NEW_PASSWORD + "x"}
        )
        assert assert_error(again, 400)["error"] == "Invalid link"
        # The login from before the new password is over.
        stale = await old.get(
            "/api/auth/me", headers={"Authorization": f"Bearer {old_pair['access']}"}
        )
        assert_error(stale, 401)
        await login(old, "linked@example.com", NEW_PASSWORD)
        bad = await old.post(
            "/api/auth/login", json={"email": "linked@example.com", "password": PASSWORD}
        )
        assert_error(bad, 401)


async def test_unknown_used_and_expired_links_look_the_same(fresh: Stack) -> None:
    user_id = make_user(fresh.engine, "expired@example.com", password=None)
    expired = make_password_link(fresh.engine, user_id, expires_in=timedelta(seconds=-1))
    used = make_password_link(fresh.engine, user_id)
    async with browser(fresh) as client:
        first = await client.post(
            "/api/auth/set-password", json={"token": used, "password": NEW_PASSWORD}
        )
        assert first.status_code == 200
        bodies = [
            assert_error(
                await client.post(
                    "/api/auth/set-password", json={"token": token, "password": NEW_PASSWORD}
                ),
                400,
            )
            for token in (expired, used, "x" * 43)
        ]
    assert bodies[0] == bodies[1] == bodies[2]
    assert row_counts(fresh.engine)["refresh_token"] == 1


async def test_forgot_password_answers_the_same_and_mails_only_owners(fresh: Stack) -> None:
    make_user(fresh.engine, "forgetful@example.com", name="<b>Forgetful</b>")
    async with browser(fresh) as client:
        nobody = await client.post(
            "/api/auth/forgot-password", json={"email": "nobody@example.com"}
        )
        owner = await client.post(
            "/api/auth/forgot-password", json={"email": "Forgetful@example.com"}
        )
        assert nobody.status_code == owner.status_code == 202
        assert nobody.json() == owner.json()
        first = fresh.mail.wait_for(lambda m: "forgetful@example.com" in m["To"], timeout=10)
        assert "&lt;b&gt;Forgetful" in (first.html or "")
        first_link = re.search(r"token=([A-Za-z0-9_-]+)", first.text or "")
        assert first_link is not None

        # A second request spends the first link (once that link's row is committed).
        wait_until(lambda: row_counts(fresh.engine)["set_password_token"] == 1, timeout=10)
        fresh.mail.clear()
        await client.post("/api/auth/forgot-password", json={"email": "forgetful@example.com"})
        second = fresh.mail.wait_for(lambda m: "forgetful@example.com" in m["To"], timeout=10)
        second_link = re.search(r"token=([A-Za-z0-9_-]+)", second.text or "")
        assert second_link is not None
        stale = await client.post(
            "/api/auth/set-password",
            json={"token": first_link.group(1), "password": NEW_PASSWORD},
        )
        assert_error(stale, 400)
        done = await client.post(
            "/api/auth/set-password",
            json={"token": second_link.group(1), "password": NEW_PASSWORD},
        )
        assert done.status_code == 200
    await asyncio.sleep(0.5)
    assert not [m for m in fresh.mail.messages if "nobody@example.com" in m["To"]]
    with fresh.engine.connect() as conn:
        purposes = conn.execute(sa.text("SELECT purpose FROM set_password_token")).scalars().all()
    assert purposes == ["reset", "reset"]
