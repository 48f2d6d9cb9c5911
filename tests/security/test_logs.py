"""No secret reaches the logs: access-log lines with session ids and link tokens, request
bodies with passwords and refresh tokens, error logs. Checked on the logs as production
formats them (JSON, redacted), from an API server with its access log switched on."""

import io
import json
from collections.abc import Iterator

import pytest

from api.main import create_app
from core.urls import WEBHOOK_PATH
from sandbox.server import BackgroundServer
from tests.utils.helpers import event, signed
from tests.utils.security import (
    PASSWORD,
    browser,
    make_password_link,
    make_user,
    paid_enrollment,
    wait_verified,
)
from tests.utils.stack import WEBHOOK_SECRET, Stack


@pytest.fixture
def logged_api(fresh: Stack, captured_logs: io.StringIO) -> Iterator[Stack]:
    """A second API server on the same stack, logging every request like production."""
    server = BackgroundServer(
        create_app(fresh.settings), log_level="info", log_config=None, access_log=True
    )
    with server:
        yield Stack(
            fresh.settings, server.url, fresh.sandbox_url, fresh.client, fresh.engine, fresh.mail
        )


async def test_secrets_never_reach_the_logs(logged_api: Stack, captured_logs: io.StringIO) -> None:
    stack = logged_api
    secrets: dict[str, str] = {"password": PASSWORD, "webhook secret": WEBHOOK_SECRET}
    async with browser(stack) as payer:
        session_id = await paid_enrollment(stack, payer, "logged@example.com")
        secrets["checkout nonce"] = payer.cookies["onramp_checkout"]
        verified = (await wait_verified(payer, session_id)).json()
        secrets |= {"session id": session_id, "auto access": verified["access"]}
        secrets["auto refresh"] = verified["refresh"]

        user_id = make_user(stack.engine, "logged.in@example.com")
        pair = (
            await payer.post(
                "/api/auth/login", json={"email": "logged.in@example.com", "password": PASSWORD}
            )
        ).json()
        rotated = (await payer.post("/api/auth/refresh", json={"refresh": pair["refresh"]})).json()
        secrets |= {"access": pair["access"], "refresh": pair["refresh"]}
        secrets["rotated refresh"] = rotated["refresh"]
        # Replayed: the refusal is logged nowhere with the token in it either.
        await payer.post("/api/auth/refresh", json={"refresh": pair["refresh"]})
        await payer.get("/api/auth/me", headers={"Authorization": f"Bearer {pair['access']}"})

        link = make_password_link(stack.engine, user_id, purpose="reset")
        secrets["reset link token"] = link
        await payer.get(f"/set-password?token={link}", headers={"Accept": "text/html"})
        await payer.post("/api/auth/set-password", json={"token": link, "password": PASSWORD + "!"})
        # Errors are logged too: a forged webhook and a session id nobody has.
        body, headers = signed(event("checkout.session.expired", {"id": "x"}), "whsec_forged")
        await payer.post(WEBHOOK_PATH, content=body, headers=headers)
        await payer.get(
            "/api/payments/verify-session/", params={"session_id": "cs_test_" + "Z" * 30}
        )

    output = captured_logs.getvalue()
    # The server's access log was captured (redacted): the absence below means something.
    access = [
        line["msg"]
        for line in map(json.loads, output.splitlines())
        if line["logger"] == "uvicorn.access"
    ]
    assert any("/api/payments/verify-session/?session_id=cs_test_*** " in m for m in access)
    assert any("/set-password?token=*** " in m for m in access)
    assert any("/api/auth/refresh" in m and " 401" in m for m in access)
    leaked = [name for name, value in secrets.items() if value and value in output]
    assert not leaked, f"secrets in the logs: {leaked}"
    assert "ZZZZZZZZZZ" not in output
