"""The owner of an email wins over whoever paid with it. Anyone may pay with someone
else's address and be logged in by the success page; the moment the owner proves the
address (welcome or reset link), every other login of the account ends, an auto-login not
yet claimed lapses, and a later purchase on a never-proven account mails the owner a link
and ends the logins held so far."""

import re

import httpx
from sqlmodel import Session, select

from core.models import User
from devstack.mailcatcher import CaughtMessage
from tests.utils.security import (
    browser,
    paid_enrollment,
    pay,
    start_checkout,
    wait_enrollment_ready,
    wait_verified,
)
from tests.utils.stack import Stack

NEW_PASSWORD = "owner-proves-it-2026!"


def link_in(message: CaughtMessage) -> str:
    found = re.search(r"/set-password\?token=([A-Za-z0-9_\-]+)", message.text or "")
    assert found, message.text
    return found.group(1)


def welcome_for(stack: Stack, email: str, nth: int = 1) -> CaughtMessage:
    def mine(m: CaughtMessage) -> bool:
        return email in m["To"] and "set-password?token=" in (m.text or "")

    stack.mail.wait_for(lambda m: len([x for x in stack.mail.messages if mine(x)]) >= nth, 30)
    return [m for m in stack.mail.messages if mine(m)][nth - 1]


def user(stack: Stack, email: str) -> User:
    with Session(stack.engine) as s:
        return s.exec(select(User).where(User.email == email)).one()


async def me(client: httpx.AsyncClient, access: str) -> int:
    r = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {access}"})
    return r.status_code


async def test_the_owner_proving_the_email_ends_the_payers_logins(fresh: Stack) -> None:
    async with browser(fresh) as payer, browser(fresh) as owner:
        sid = await paid_enrollment(fresh, payer, "owner@example.com")
        landed = (await wait_verified(payer, sid)).json()
        access, refresh = landed["access"], landed["refresh"]
        assert await me(payer, access) == 200
        assert user(fresh, "owner@example.com").email_verified_at is None

        r = await owner.post(
            "/api/auth/set-password",
            json={
                "token": link_in(welcome_for(fresh, "owner@example.com")),
                "password": NEW_PASSWORD,
            },
        )
        assert r.status_code == 200, r.text
        assert user(fresh, "owner@example.com").email_verified_at is not None
        assert await me(owner, r.json()["access"]) == 200
        # The payer's access token and refresh family are dead.
        assert await me(payer, access) == 401
        assert (await payer.post("/api/auth/refresh", json={"refresh": refresh})).status_code == 401


async def test_a_proof_before_the_payer_lands_means_no_auto_login(fresh: Stack) -> None:
    async with browser(fresh) as payer, browser(fresh) as owner:
        sid = await paid_enrollment(fresh, payer, "first@example.com")
        await wait_enrollment_ready(fresh, sid)
        token = link_in(welcome_for(fresh, "first@example.com"))
        r = await owner.post(
            "/api/auth/set-password", json={"token": token, "password": NEW_PASSWORD}
        )
        assert r.status_code == 200
        late = await wait_verified(payer, sid)
    body = late.json()
    assert body["login_required"] is True and "access" not in body
    assert "onramp_access" not in late.cookies


async def test_a_purchase_on_an_unproven_account_mails_the_owner_and_ends_its_logins(
    fresh: Stack,
) -> None:
    async with browser(fresh) as payer, browser(fresh) as second:
        first = await paid_enrollment(fresh, payer, "shared@example.com")
        access = (await wait_verified(payer, first)).json()["access"]
        assert await me(payer, access) == 200
        welcome_for(fresh, "shared@example.com", 1)

        other = await start_checkout(second, "shared@example.com", track="FSD")
        await pay(fresh, other)
        attached = await wait_verified(second, other)
        assert "access" not in attached.json()  # an account it did not create: no tokens
        # The owner gets a link for the second purchase too, and the payer is logged out.
        link = link_in(welcome_for(fresh, "shared@example.com", 2))
        assert await me(payer, access) == 401
        r = await second.post(
            "/api/auth/set-password", json={"token": link, "password": NEW_PASSWORD}
        )
        assert r.status_code == 200


async def test_a_purchase_on_a_proven_account_keeps_its_logins(fresh: Stack) -> None:
    async with browser(fresh) as owner:
        first = await paid_enrollment(fresh, owner, "proven@example.com")
        await wait_verified(owner, first)
        link = link_in(welcome_for(fresh, "proven@example.com"))
        proven = await owner.post(
            "/api/auth/set-password", json={"token": link, "password": NEW_PASSWORD}
        )
        access = proven.json()["access"]
        again = await start_checkout(owner, "proven@example.com", track="FSD")
        await pay(fresh, again)
        await wait_verified(owner, again)
        assert await me(owner, access) == 200
    # No new link: the owner already holds a password.
    assert len([m for m in fresh.mail.messages if "set-password?token=" in (m.text or "")]) == 1
