"""Abuse limits: per address and per email, 429 with Retry-After and a JSON body; tunable and
switchable by settings; Redis-backed windows with an in-process fallback."""

import secrets
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api.main import create_app
from api.ratelimit import Limit, MemoryWindows, RedisWindows, parse_limit
from core.settings import Settings
from sandbox.server import BackgroundServer
from tests.utils.helpers import require
from tests.utils.security import (
    PASSWORD,
    assert_error,
    browser,
    make_password_link,
    make_user,
    random_address,
    row_counts,
    start_checkout,
)
from tests.utils.stack import Stack

Tune = Callable[..., None]


def assert_limited(response: httpx.Response) -> None:
    body = assert_error(response, 429)
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 3600 and body["retry_after"] == retry_after


async def test_login_is_limited_per_address(fresh: Stack, limits_on: Tune) -> None:
    limits_on(rate_limit_login_ip="3/min")
    make_user(fresh.engine, "limited@example.com")
    wrong = {"email": "limited@example.com", "password": "not the password"}
    async with browser(fresh, random_address()) as attacker, browser(fresh) as other:
        for _ in range(3):
            assert_error(await attacker.post("/api/auth/login", json=wrong), 401)
        # Over the limit even with the right password: guessing stops here.
        right = {"email": "limited@example.com", "password": PASSWORD}
        assert_limited(await attacker.post("/api/auth/login", json=right))
        # Someone else, from another address, is not affected.
        other.headers["X-Forwarded-For"] = random_address()
        assert (await other.post("/api/auth/login", json=right)).status_code == 200
    assert row_counts(fresh.engine)["refresh_token"] == 1


async def test_login_is_limited_per_email_across_addresses(fresh: Stack, limits_on: Tune) -> None:
    limits_on(rate_limit_login_email="2/15min")
    make_user(fresh.engine, "target@example.com")
    for attempt in range(3):
        async with browser(fresh, random_address()) as client:
            response = await client.post(
                "/api/auth/login",
                # The same account however the address is spelled.
                json={
                    "email": "Target@Example.com" if attempt else "target@example.com",
                    "password": f"guess number {attempt}",
                },
            )
            if attempt < 2:
                assert_error(response, 401)
            else:
                assert_limited(response)


async def test_each_sensitive_endpoint_is_limited(fresh: Stack, limits_on: Tune) -> None:
    limits_on(
        rate_limit_checkout_ip="1/min",
        rate_limit_forgot_password_email="1/h",
        rate_limit_set_password_ip="1/min",
        rate_limit_verify_session_ip="1/min",
    )
    user_id = make_user(fresh.engine, "reset.me@example.com")
    async with browser(fresh, random_address()) as client:
        await start_checkout(client, "limit.checkout@example.com")
        again = await client.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": "limit.other@example.com", "name": "X", "track": "DP"},
        )
        assert_limited(again)
        assert row_counts(fresh.engine)["enrollment"] <= 1

        forgot = {"email": "reset.me@example.com"}
        assert (await client.post("/api/auth/forgot-password", json=forgot)).status_code == 202
        assert_limited(await client.post("/api/auth/forgot-password", json=forgot))

        link = make_password_link(fresh.engine, user_id)
        bad = {"token": "y" * 43, "password": "another passphrase 1"}
        assert_error(await client.post("/api/auth/set-password", json=bad), 400)
        good = {"token": link, "password": "another passphrase 1"}
        assert_limited(await client.post("/api/auth/set-password", json=good))

        params = {"session_id": "cs_test_" + "a" * 24}
        first = await client.get("/api/payments/verify-session/", params=params)
        assert first.status_code == 404
        assert_limited(await client.get("/api/payments/verify-session/", params=params))


async def test_limits_can_be_switched_off(fresh: Stack, limits_on: Tune) -> None:
    limits_on(rate_limit_enabled=False, rate_limit_login_ip="1/min", rate_limit_login_email="1/min")
    make_user(fresh.engine, "benchmark@example.com")
    async with browser(fresh, random_address()) as client:
        for _ in range(5):
            response = await client.post(
                "/api/auth/login", json={"email": "benchmark@example.com", "password": "nope"}
            )
            assert_error(response, 401)


def test_limit_specs() -> None:
    assert parse_limit("10/min") == Limit(10, 60)
    assert parse_limit("5 / 15min") == Limit(5, 900)
    assert parse_limit("100/hours") == Limit(100, 3600)
    assert parse_limit("3/day") == Limit(3, 86400)
    assert parse_limit("2/s") == Limit(2, 1)
    assert parse_limit("") is None and parse_limit("0/min") is None
    for bad in ("ten/min", "10/fortnight", "10", "/min", "-1/min"):
        with pytest.raises(ValueError):
            parse_limit(bad)


async def test_memory_windows_count_and_reset() -> None:
    windows = MemoryWindows()
    limit = Limit(2, 1)
    assert await windows.hit("k", limit) == 0 and await windows.hit("k", limit) == 0
    assert 0 < await windows.hit("k", limit) <= 1
    assert await windows.hit("other", limit) == 0


async def test_windows_take_back_an_attempt_that_did_not_count() -> None:
    windows = MemoryWindows()
    limit = Limit(1, 60)
    assert await windows.hit("k", limit) == 0
    await windows.undo("k")
    await windows.undo("k")  # never below zero: the next attempt is still the first
    assert await windows.hit("k", limit) == 0
    assert await windows.hit("k", limit) > 0


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return True
    except OSError:
        return False


async def test_redis_windows_are_shared_between_processes() -> None:
    require(
        redis_up(),
        "Redis on 127.0.0.1:6379",
        "`make system-deps` installs and starts it (scripts/tools/ensure-redis.sh)",
    )
    key = f"onramp:rl:test:{secrets.token_hex(8)}"
    limit = Limit(2, 30)
    one = RedisWindows("redis://127.0.0.1:6379/0", MemoryWindows())
    two = RedisWindows("redis://127.0.0.1:6379/0", MemoryWindows())  # another API process
    assert await one.hit(key, limit) == 0
    assert await two.hit(key, limit) == 0
    wait = await one.hit(key, limit)
    assert 0 < wait <= 30
    await two.undo(key)
    await two.undo(key)  # 1 of 2 left, whichever process gave them back
    assert await one.hit(key, limit) == 0
    assert await two.hit(key, limit) > 0
    unknown = f"onramp:rl:test:{secrets.token_hex(8)}"
    await one.undo(unknown)  # no key left behind without an expiry
    assert await one.hit(unknown, Limit(1, 30)) == 0


async def test_redis_down_falls_back_to_memory() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    windows = RedisWindows(f"redis://127.0.0.1:{closed_port}/0", MemoryWindows())
    limit = Limit(1, 60)
    assert await windows.hit("k", limit) == 0
    assert await windows.hit("k", limit) > 0


# ---- who the client is: the peer, or what a trusted proxy says ------------------------


def wrong_login(email: str, attempt: int = 0) -> dict[str, str]:
    return {"email": email, "password": f"not the password {attempt}"}


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    fresh: Stack, limits_on: Tune
) -> None:
    # The test client connects from loopback; with no proxy trusted, loopback is the client.
    limits_on(trusted_proxies="", rate_limit_login_ip="3/min")
    make_user(fresh.engine, "spoofer@example.com")
    async with browser(fresh) as client:
        for attempt in range(4):
            client.headers["X-Forwarded-For"] = random_address()
            response = await client.post(
                "/api/auth/login", json=wrong_login("spoofer@example.com", attempt)
            )
            if attempt < 3:
                assert_error(response, 401)
            else:
                assert_limited(response)


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    fresh: Stack, limits_on: Tune
) -> None:
    limits_on(trusted_proxies="127.0.0.1, 10.200.0.0/16", rate_limit_login_ip="2/min")
    make_user(fresh.engine, "proxied@example.com")
    first, second = random_address(), random_address()
    async with browser(fresh) as client:
        for attempt in range(2):
            # What the client wrote itself (left) is not believed; the trusted hops are skipped.
            client.headers["X-Forwarded-For"] = f"{random_address()}, {first}, 10.200.3.4"
            response = await client.post(
                "/api/auth/login", json=wrong_login("proxied@example.com", attempt)
            )
            assert_error(response, 401)
        assert_limited(
            await client.post("/api/auth/login", json=wrong_login("proxied@example.com"))
        )
        # Another client behind the same proxies has a window of its own.
        client.headers["X-Forwarded-For"] = f"{second}, 10.200.3.4"
        response = await client.post("/api/auth/login", json=wrong_login("proxied@example.com"))
        assert_error(response, 401)


async def test_one_ipv6_network_is_one_client(fresh: Stack, limits_on: Tune) -> None:
    # Anyone with IPv6 holds a /64: counting each address apart would void the limit.
    limits_on(trusted_proxies="127.0.0.1", rate_limit_login_ip="2/min")
    make_user(fresh.engine, "six@example.com")
    async with browser(fresh) as client:
        for attempt in range(3):
            client.headers["X-Forwarded-For"] = (
                f"2001:db8:5:6:{secrets.token_hex(2)}::{attempt + 1}"
            )
            response = await client.post("/api/auth/login", json=wrong_login("six@example.com"))
            if attempt < 2:
                assert_error(response, 401)
            else:
                assert_limited(response)


def test_servers_leave_forwarded_headers_to_the_app() -> None:
    # uvicorn's own proxy-headers middleware would rewrite the peer before the app sees it.
    from devstack.processes import api_process
    from devstack.run import plan
    from devstack.tools import DevTools

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    api = next(s for s in plan(settings, DevTools()) if s.name == "api")
    assert "--no-proxy-headers" in api.argv
    assert "--no-proxy-headers" in api_process({}, 8000).argv


# ---- per-email limits that an attacker cannot turn against the owner --------------------


async def test_failed_logins_lock_out_the_guessing_address_not_the_owner(
    fresh: Stack, limits_on: Tune
) -> None:
    limits_on(rate_limit_login_email_ip="3/15min", rate_limit_login_email="50/15min")
    make_user(fresh.engine, "victim@example.com")
    right = {"email": "victim@example.com", "password": PASSWORD}
    async with (
        browser(fresh, random_address()) as attacker,
        browser(fresh, random_address()) as owner,
    ):
        for attempt in range(3):
            response = await attacker.post(
                "/api/auth/login", json=wrong_login("victim@example.com", attempt)
            )
            assert_error(response, 401)
        assert_limited(
            await attacker.post("/api/auth/login", json=wrong_login("victim@example.com", 9))
        )
        # Past the limit the password is not even checked: guessing right changes nothing.
        assert_limited(await attacker.post("/api/auth/login", json=right))
        assert (await owner.post("/api/auth/login", json=right)).status_code == 200


async def test_successful_logins_do_not_count_toward_the_email_limits(
    fresh: Stack, limits_on: Tune
) -> None:
    limits_on(rate_limit_login_email_ip="2/15min", rate_limit_login_email="2/15min")
    make_user(fresh.engine, "often@example.com")
    right = {"email": "often@example.com", "password": PASSWORD}
    async with browser(fresh, random_address()) as client:
        assert_error(
            await client.post("/api/auth/login", json=wrong_login("often@example.com")), 401
        )
        for _ in range(4):
            assert (await client.post("/api/auth/login", json=right)).status_code == 200
        assert_error(
            await client.post("/api/auth/login", json=wrong_login("often@example.com")), 401
        )
        assert_limited(await client.post("/api/auth/login", json=wrong_login("often@example.com")))


async def test_distributed_guessing_meets_the_email_bound_but_the_owners_browser_gets_in(
    fresh: Stack, limits_on: Tune
) -> None:
    limits_on(rate_limit_login_email_ip="5/15min", rate_limit_login_email="3/15min")
    make_user(fresh.engine, "wanted@example.com")
    make_user(fresh.engine, "guesser@example.com")
    right = {"email": "wanted@example.com", "password": PASSWORD}
    async with browser(fresh, random_address()) as owner, browser(fresh) as guesser:
        # The owner logged in from this browser once, some day before the attack.
        assert (await owner.post("/api/auth/login", json=right)).status_code == 200
        # The guesser may log in to an account of its own: that is no pass for another one.
        guesser.headers["X-Forwarded-For"] = random_address()
        await guesser.post(
            "/api/auth/login", json={"email": "guesser@example.com", "password": PASSWORD}
        )
        for attempt in range(4):
            guesser.headers["X-Forwarded-For"] = random_address()
            response = await guesser.post(
                "/api/auth/login", json=wrong_login("wanted@example.com", attempt)
            )
            if attempt < 3:
                assert_error(response, 401)
            else:
                assert_limited(response)
        # Beyond the bound a new client is refused unchecked, whatever the password: were it
        # checked, 200 against 429 would tell the guessers when they got it right.
        guesser.headers["X-Forwarded-For"] = random_address()
        assert_limited(await guesser.post("/api/auth/login", json=right))
        # The owner's browser, now on another network, is still checked, and gets in.
        owner.headers["X-Forwarded-For"] = random_address()
        assert (await owner.post("/api/auth/login", json=right)).status_code == 200


async def test_checkouts_for_an_email_from_elsewhere_do_not_block_its_owner(
    fresh: Stack, limits_on: Tune
) -> None:
    limits_on(rate_limit_checkout_email_ip="2/h")
    order = {"email": "buyer@example.com", "name": "Ada Lovelace", "track": "DP"}
    async with browser(fresh, random_address()) as other, browser(fresh, random_address()) as owner:
        for _ in range(2):
            await start_checkout(other, "buyer@example.com")
        again = await other.post("/api/payments/create-anonymous-checkout/", json=order)
        assert_limited(again)
        assert (
            await owner.post("/api/payments/create-anonymous-checkout/", json=order)
        ).status_code == 200


# ---- verify-session: unknown ids are bounded before they cost a Stripe call -------------


class CountingGateway:
    """The app's Stripe gateway, counting the Checkout Session lookups."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.lookups = inner, 0

    def retrieve_checkout_session(self, *args: Any, **kwargs: Any) -> Any:
        self.lookups += 1
        return self.inner.retrieve_checkout_session(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_unknown_session_ids_are_bounded_per_address(fresh: Stack) -> None:
    settings = fresh.settings.model_copy(
        update={
            "rate_limit_enabled": True,
            "trusted_proxies": "127.0.0.1",
            "rate_limit_verify_session_ip": "100/min",
            "rate_limit_verify_session_unknown_ip": "3/min",
        }
    )
    app = create_app(settings)
    with BackgroundServer(app, proxy_headers=False) as server:
        gateway = app.state.stripe = CountingGateway(app.state.stripe)
        address = random_address()
        headers = {"X-Forwarded-For": address}
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=headers) as client:
            # A real checkout polled before payment: known to Stripe, so never "unknown".
            created = await client.post(
                "/api/payments/create-anonymous-checkout/",
                json={"email": "poller@example.com", "name": "Ada Lovelace", "track": "DP"},
            )
            known = created.json()["sessionId"]
            for _ in range(5):
                polled = await client.get(
                    "/api/payments/verify-session/", params={"session_id": known}
                )
                assert polled.status_code == 202, polled.text
            lookups_before = gateway.lookups
            for attempt in range(6):
                random_id = "cs_test_" + secrets.token_hex(16)
                response = await client.get(
                    "/api/payments/verify-session/", params={"session_id": random_id}
                )
                if attempt < 3:
                    assert_error(response, 404)
                else:
                    assert_limited(response)
            assert gateway.lookups - lookups_before == 3
            # Another address still asks Stripe.
            client.headers["X-Forwarded-For"] = random_address()
            response = await client.get(
                "/api/payments/verify-session/",
                params={"session_id": "cs_test_" + secrets.token_hex(16)},
            )
            assert_error(response, 404)
            assert gateway.lookups - lookups_before == 4
