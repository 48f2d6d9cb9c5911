"""Steps of the student journey over plain HTTP, shared by the page and browser tests."""

import asyncio
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import sqlalchemy as sa
from sqlmodel import Session

from core.accounts.security import hash_password
from core.crypto import new_token, token_hash
from core.models import SetPasswordToken, User, utcnow
from tests.utils.helpers import PASSWORD
from tests.utils.stack import Stack

CARD_OK = "4242 4242 4242 4242"
CARD_DECLINED = "4000 0000 0000 0002"
PAGES = [
    "/",
    "/get-started",
    "/payment/success",
    "/payment/cancel",
    "/login",
    "/forgot-password",
    "/set-password?token=" + "t" * 43,
]


async def start_checkout(
    http: httpx.AsyncClient, email: str, name: str = "Ada Lovelace", track: str = "DP"
) -> str:
    """The no-JavaScript form: POST /get-started answers 303 to the hosted checkout page."""
    r = await http.post("/get-started", data={"email": email, "name": name, "track": track})
    assert r.status_code == 303, r.text
    return r.headers["location"]


async def pay(checkout_url: str, card: str = CARD_OK) -> httpx.Response:
    """Pay on the sandbox's hosted page as a browser would (a form POST of its fields)."""
    async with httpx.AsyncClient(timeout=30) as browser:
        page = await browser.get(checkout_url)
        assert page.status_code == 200 and 'name="card_number"' in page.text
        return await browser.post(
            checkout_url,
            data={
                "card_number": card,
                "card_expiry": "12/34",
                "card_cvc": "123",
                "billing_name": "Ada Lovelace",
            },
        )


def session_id_of(success_url: str) -> str:
    return parse_qs(urlsplit(success_url).query)["session_id"][0]


async def wait_verified(http: httpx.AsyncClient, session_id: str) -> httpx.Response:
    """Poll verify-session like success.js does, until the enrollment is ready (200)."""
    async with asyncio.timeout(60):
        while True:
            r = await http.get("/api/payments/verify-session/", params={"session_id": session_id})
            if r.status_code == 200:
                return r
            assert r.status_code == 202, r.text
            await asyncio.sleep(0.5)


async def enroll(
    stack: Stack, http: httpx.AsyncClient, email: str, name: str = "Ada Lovelace", track: str = "DP"
) -> httpx.Response:
    """Checkout, pay and wait: the verify-session answer that logs the browser in."""
    checkout_url = await start_checkout(http, email, name, track)
    paid = await pay(checkout_url)
    assert paid.status_code == 303, paid.text
    return await wait_verified(http, session_id_of(paid.headers["location"]))


def create_user(
    engine: sa.Engine, email: str, name: str = "Grace Hopper", track: str = "DP"
) -> int:
    """An account that existed before the payment, with a password."""
    with Session(engine) as s:
        user = User(
            email=email,
            username=re.sub(r"[^a-z0-9]", "_", email.split("@")[0]),
            name=name,
            password_hash=hash_password(PASSWORD),
            track=track,
            enrollment_status="READY",
        )
        s.add(user)
        s.commit()
        assert user.id is not None
        return user.id


def set_password_link(engine: sa.Engine, user_id: int) -> str:
    """The raw token of a welcome link, as the welcome email would carry it."""
    raw = new_token()
    with Session(engine) as s:
        s.add(
            SetPasswordToken(
                user_id=user_id,
                token_hash=token_hash(raw),
                purpose="welcome",
                expires_at=utcnow() + timedelta(hours=1),
            )
        )
        s.commit()
    return raw


def cookie(http: httpx.AsyncClient, name: str) -> str | None:
    return next((c.value for c in http.cookies.jar if c.name == name), None)


def set_cookie_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def scripts_and_styles(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


def unsafe_markup(html: str) -> list[str]:
    """What the app's CSP (script-src 'self', style-src 'self') would block."""
    problems: list[str] = []
    problems += re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    problems += re.findall(r"\son[a-z]+\s*=", html)
    problems += re.findall(r"\sstyle\s*=", html)
    problems += re.findall(r"<style\b", html)
    problems += re.findall(r"javascript:", html, flags=re.IGNORECASE)
    return problems


def json_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict)
    return body
