"""Hostile requests: open redirects, oversized, mistyped, mis-encoded and deeply nested
bodies, forged webhooks. Each is refused with its exact 4xx and writes nothing."""

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.routing import APIRoute

from api.main import create_app
from core.urls import WEBHOOK_PATH
from tests.utils.helpers import event, forged_session, signed
from tests.utils.security import PASSWORD, assert_error, browser, make_user, row_counts
from tests.utils.stack import WEBHOOK_SECRET, Stack

CHECKOUT = "/api/payments/create-anonymous-checkout/"
WEBHOOK = WEBHOOK_PATH


def checkout_body(**extra: object) -> dict[str, object]:
    return {"email": "buyer@example.com", "name": "Buyer", "track": "DP", **extra}


# ---- open redirects ------------------------------------------------------------------


def hostile_urls(own: str) -> list[str]:
    host = own.split("://", 1)[1]  # 127.0.0.1:PORT
    return [
        "https://evil.example/payment/success",
        "//evil.example/payment/success",
        "///evil.example/",
        "/\\evil.example/",
        "javascript:alert(document.cookie)",
        "JaVaScRiPt:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        f"http://{host}@evil.example/",
        f"http://user:pass@{host}/payment/success",
        f"http://evil.example\\@{host}/",
        f"http:\\\\{host}\\payment\\success",
        f"http://{host}.evil.example/",
        f"https://{host}/payment/success",  # another scheme is another origin
        f"HTTPS://{host}/payment/success",
        f"http://{host}\t/payment/success",
        "/payment/success",
        "evil.example",
    ]


async def test_redirect_urls_must_stay_on_our_origin(fresh: Stack) -> None:
    own = fresh.settings.public_base_url
    async with browser(fresh) as client:
        for field in ("success_url", "cancel_url"):
            for url in hostile_urls(own):
                response = await client.post(CHECKOUT, json=checkout_body(**{field: url}))
                assert_error(response, 400)
                assert "onramp_checkout" not in client.cookies, url
        assert row_counts(fresh.engine)["enrollment"] == 0
        # Our own origin, in any case of scheme and host, is fine.
        control = await client.post(
            CHECKOUT,
            json=checkout_body(
                success_url=f"{own.upper().replace('HTTP://', 'HtTp://')}/payment/success",
                cancel_url=f"{own}/get-started",
            ),
        )
        assert control.status_code == 200, control.text
    # The row is committed before the answer is sent.
    assert row_counts(fresh.engine)["enrollment"] == 1


# ---- bodies --------------------------------------------------------------------------


async def test_oversized_bodies_are_refused_before_parsing(fresh: Stack) -> None:
    make_user(fresh.engine, "big@example.com")
    limit = fresh.settings.max_body_bytes
    huge = json.dumps({"email": "big@example.com", "password": "x" * (limit + 10)})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 1024 + 2):
            yield b"[" * 1024

    async with browser(fresh) as client:
        for path in ("/api/auth/login", CHECKOUT, "/api/auth/forgot-password"):
            response = await client.post(
                path, content=huge, headers={"Content-Type": "application/json"}
            )
            assert_error(response, 413)
        # Without a Content-Length (chunked), the limit still holds.
        chunked = await client.post(
            "/api/auth/login", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(chunked, 413)
        # A form post to a page is bounded too.
        page = await client.post(
            "/get-started",
            content=b"a=" + b"x" * (limit + 1),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert page.status_code == 413
    assert row_counts(fresh.engine)["enrollment"] == 0
    assert row_counts(fresh.engine)["refresh_token"] == 0


async def test_the_webhook_takes_real_event_sizes_but_not_more(fresh: Stack) -> None:
    big_event = event("checkout.session.expired", {"object": "checkout.session", "id": "cs_x"})
    big_event["padding"] = "x" * 200_000
    payload, headers = signed(big_event, "whsec_wrong_secret")
    async with browser(fresh) as client:
        # Bigger than the API limit, within the webhook's: reaches the signature check.
        response = await client.post(WEBHOOK, content=payload, headers=headers)
        assert assert_error(response, 400)["error"] == "Invalid signature"
        big_event["padding"] = "x" * (fresh.settings.max_webhook_body_bytes + 1)
        payload, headers = signed(big_event, WEBHOOK_SECRET)
        assert_error(await client.post(WEBHOOK, content=payload, headers=headers), 413)
    assert row_counts(fresh.engine)["stripe_event"] == 0


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/xml",
        "text/json",
    ],
)
async def test_api_bodies_must_be_json(fresh: Stack, content_type: str | None) -> None:
    make_user(fresh.engine, "typed@example.com")
    body = json.dumps({"email": "typed@example.com", "password": PASSWORD}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    async with browser(fresh) as client:
        for path in ("/api/auth/login", CHECKOUT):
            response = await client.post(path, content=body, headers=headers)
            assert_error(response, 415)
    assert row_counts(fresh.engine)["refresh_token"] == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"email": "\xff\xfe@example.com", "password": "x"}',
        '{"email": "a@example.com", "password": "p\u00e4ssword123"}'.encode("utf-16"),
        '{"email": "a@example.com", "password": "p\u00e4ssword123"}'.encode("latin-1"),
        b'{"email": ' + b"[" * 40 + b"]" * 40 + b"}",
        b"[" * 20_000 + b"]" * 20_000,
        b'{"email": "a@example.com", "password": ',
        b'{"email": "a@example.com", "password": "x"}}',
        b"null",
        b'"just a string"',
        b'{"email": 12, "password": ["x"]}',
        b'{"email": "a@example.com", "password": ""}',
    ],
)
async def test_malformed_json_is_a_400(fresh: Stack, raw: bytes) -> None:
    async with browser(fresh) as client:
        for path in ("/api/auth/login", CHECKOUT, "/api/auth/set-password"):
            response = await client.post(
                path, content=raw, headers={"Content-Type": "application/json"}
            )
            assert_error(response, 400)
    assert row_counts(fresh.engine)["enrollment"] == 0


async def test_control_characters_in_names_are_refused(fresh: Stack) -> None:
    async with browser(fresh) as client:
        for name in ("Ada\x00Lovelace", "Ada\u202eecalevoL", "\u200b", " ", "x" * 201):
            assert_error(await client.post(CHECKOUT, json=checkout_body(name=name)), 400)
    assert row_counts(fresh.engine)["enrollment"] == 0


# ---- webhooks ------------------------------------------------------------------------


async def test_forged_and_replayed_webhooks_write_nothing(fresh: Stack) -> None:
    paid = event("checkout.session.completed", forged_session(email="forger@example.com"))
    text = json.dumps(paid)
    stale = int(time.time()) - 310
    attempts: list[tuple[bytes, dict[str, str]]] = [
        signed(paid, "whsec_not_the_real_secret"),
        signed(paid, WEBHOOK_SECRET, timestamp=stale),
        signed(paid, WEBHOOK_SECRET + "x"),
        (text.encode(), {"Content-Type": "application/json"}),
        (text.encode(), {"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=abc"}),
        (text.encode(), {"Content-Type": "application/json", "Stripe-Signature": "garbage"}),
    ]
    # Signed correctly, then changed: the amount, or the email that gets the account.
    payload, headers = signed(paid, WEBHOOK_SECRET)
    attempts.append((payload.replace(b"forger@example.com", b"victim@example.com"), headers))
    # Re-signed by someone who only knows an old signature's timestamp.
    _, old_headers = signed(paid, WEBHOOK_SECRET, timestamp=stale)
    attempts.append((payload, old_headers))
    async with browser(fresh) as client:
        for body, hdrs in attempts:
            response = await client.post(WEBHOOK, content=body, headers=hdrs)
            assert_error(response, 400)
    assert row_counts(fresh.engine) == {k: 0 for k in row_counts(fresh.engine)}

    # The same request signed with the real secret now is accepted (the test can fail).
    control = event("checkout.session.expired", {"object": "checkout.session", "id": "cs_test_x"})
    body, hdrs = signed(control, WEBHOOK_SECRET)
    async with browser(fresh) as client:
        response = await client.post(WEBHOOK, content=body, headers=hdrs)
    assert response.status_code == 200, response.text
    assert row_counts(fresh.engine)["stripe_event"] == 1


# ---- response headers ----------------------------------------------------------------


def assert_hardened(response: httpx.Response) -> None:
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers.get("x-frame-options") == "DENY"
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("referrer-policy") == "no-referrer"


async def test_every_response_carries_the_security_headers(fresh: Stack) -> None:
    async with browser(fresh) as client:
        responses = [
            await client.get("/api/health"),
            await client.get("/api/auth/me"),
            await client.get("/api/nothing-here"),
            await client.post("/api/auth/login", content=b"x", headers={"Content-Type": "a/b"}),
            await client.post(
                "/api/auth/login",
                content=b"x" * (fresh.settings.max_body_bytes + 1),
                headers={"Content-Type": "application/json"},
            ),
            await client.put("/api/auth/login", json={}),
            await client.get("/", headers={"Accept": "text/html"}),
            await client.get("/no-such-page", headers={"Accept": "text/html"}),
            await client.get("/openapi.json"),
        ]
    for response in responses:
        assert_hardened(response)

    # Even an unexpected error: a 500 that says nothing about its cause.
    app = create_app(fresh.settings)
    app.state.engine = fresh.engine

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.router.routes.insert(0, APIRoute("/api/probe/boom", boom, methods=["GET"]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/probe/boom")
    assert response.status_code == 500 and "secret internals" not in response.text
    assert response.json()["error"] == "Internal error"
    assert_hardened(response)
