"""Helpers for the hostile-input suite: accounts, payments through the stack, row counts,
rate-limit switches and log capture."""

import asyncio
import secrets
import time
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import Session

from core import repository as repo
from core.accounts.security import hash_password
from core.crypto import new_token, token_hash
from core.models import Role, SetPasswordToken, User, utcnow
from tests.utils.helpers import PASSWORD
from tests.utils.stack import Stack

TABLES = (
    "user",
    "enrollment",
    "refresh_token",
    "set_password_token",
    "stripe_event",
    "audit_event",
    "tool_account",
    "outbox_message",
)


def browser(stack: Stack, address: str | None = None) -> httpx.AsyncClient:
    """Another browser, optionally seen from another address (the test stack trusts
    loopback's X-Forwarded-For, as it would trust a local proxy: TRUSTED_PROXIES)."""
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.AsyncClient(base_url=stack.api_url, timeout=30, headers=headers)


def random_address() -> str:
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in TABLES
        }


def make_user(
    engine: sa.Engine,
    email: str,
    *,
    password: str | None = PASSWORD,
    role: str = Role.STUDENT,
    name: str = "Grace Hopper",
) -> int:
    with Session(engine) as db:
        user = User(
            email=email,
            username=repo.new_username(db, email),
            name=name,
            password_hash=hash_password(password) if password else None,
            role=role,
            track="DP" if role == Role.STUDENT else None,
        )
        db.add(user)
        db.commit()
        assert user.id is not None
        return user.id


def make_password_link(
    engine: sa.Engine,
    user_id: int,
    *,
    purpose: str = "welcome",
    expires_in: timedelta | None = None,
) -> str:
    raw = new_token()
    with Session(engine) as db:
        db.add(
            SetPasswordToken(
                user_id=user_id,
                token_hash=token_hash(raw),
                purpose=purpose,
                expires_at=utcnow() + (expires_in or timedelta(hours=1)),
            )
        )
        db.commit()
    return raw


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The exact status, and the one JSON error shape of the API."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    assert "access" not in body and "refresh" not in body
    return body  # type: ignore[no-any-return]


async def start_checkout(
    client: httpx.AsyncClient, email: str, *, name: str = "Ada Lovelace", track: str = "DP"
) -> str:
    response = await client.post(
        "/api/payments/create-anonymous-checkout/",
        json={"email": email, "name": name, "track": track},
    )
    assert response.status_code == 200, response.text
    assert "onramp_checkout" in client.cookies
    return str(response.json()["sessionId"])


async def pay(stack: Stack, session_id: str) -> None:
    async with httpx.AsyncClient(timeout=30) as sandbox:
        response = await sandbox.post(
            f"{stack.sandbox_url}/_sandbox/checkout/sessions/{session_id}/pay",
            json={"card_number": "4242424242424242"},
        )
    assert response.status_code == 200, response.text


async def wait_verified(
    client: httpx.AsyncClient, session_id: str, within: float = 90.0
) -> httpx.Response:
    """Poll verify-session like the success page until the enrollment answers 200."""
    deadline = time.monotonic() + within
    while True:
        response = await client.get(
            "/api/payments/verify-session/", params={"session_id": session_id}
        )
        if response.status_code == 200:
            return response
        assert response.status_code == 202, response.text
        assert time.monotonic() < deadline, "enrollment not ready in time"
        await asyncio.sleep(0.3)


async def paid_enrollment(
    stack: Stack, payer: httpx.AsyncClient, email: str, *, name: str = "Ada Lovelace"
) -> str:
    """`payer` starts (so holds the nonce cookie) and pays a checkout; the Session id."""
    session_id = await start_checkout(payer, email, name=name)
    await pay(stack, session_id)
    return session_id


async def wait_enrollment_ready(stack: Stack, session_id: str, within: float = 90.0) -> None:
    """Wait with a browser that has no nonce: it sees the result without spending the login."""
    async with browser(stack) as observer:
        response = await wait_verified(observer, session_id, within)
    assert response.json()["login_required"] is True
