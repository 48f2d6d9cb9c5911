"""Helpers for tests and the bench: real parts required, free ports, throwaway Postgres
databases, real sales through our checkout and the Stripe sandbox, Stripe events from
fixtures."""

import asyncio
import copy
import json
import os
import secrets
import shutil
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import stripe
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet

from core.settings import Settings
from devstack.processes import free_port as free_port  # one definition, the bench's too

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The password every test account is given (long and unrelated to the email, so it passes).
PASSWORD = "correct horse battery staple"
FIXTURES = Path(
    os.environ.get("STRIPE_FIXTURES_PATH", ROOT.parent / "shared" / "stripe" / "fixtures3.json")
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def require(condition: object, what: str, how_to_install: str) -> None:
    """Stop a test whose real part (a server, a binary, a browser) is missing: a skip that
    names the part and its install, or under CI=true a failure, since CI must run it all."""
    if condition:
        return
    reason = f"{what} is missing: {how_to_install}"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing real part fails the run)", pytrace=False)
    pytest.skip(reason)


def create_database(prefix: str = "onramp_test") -> str:
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


def migrate(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.cmd_opts = Namespace(x=[f"url={url}"])
    command.upgrade(cfg, "head")


def production_settings(**overrides: object) -> Settings:
    """Settings that pass `check_production`: fresh secrets, live keys, every real server."""
    values: dict[str, object] = {
        "app_env": "production",
        "jwt_secret": secrets.token_urlsafe(32),
        "tool_secret_key": Fernet.generate_key().decode(),
        "stripe_secret_key": "sk_live_" + secrets.token_hex(12),
        "stripe_publishable_key": "pk_live_" + secrets.token_hex(12),
        "stripe_webhook_secret": "whsec_" + secrets.token_hex(16),
        "database_url": "postgresql+psycopg://onramp@db/onramp",
        "smtp_host": "smtp.example.com",
        "smtp_port": 587,
        "learning_database_url": "postgresql://onramp@db/learning",
        "superset_url": "http://superset:8088",
        "prefect_api_url": "http://prefect:4200/api",
        "prefect_api_auth_string": "onramp:" + secrets.token_urlsafe(24),
        "docker_host": "unix:///var/run/docker.sock",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# ---- Stripe objects built from Stripe's own published fixtures -----------------------


def stripe_fixture(resource: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads(FIXTURES.read_text())["resources"][resource])


def forged_session(
    *, email: str, track: str = "DP", name: str = "Ada Lovelace", session_id: str | None = None
) -> dict[str, Any]:
    """A paid-looking Checkout Session made by the test from Stripe's fixture object, not by
    Stripe: for webhooks whose body the app must not take at its word (a bad signature, a
    tampered body, a status Stripe's own copy is asked about). Not a sale: the fulfilment
    gate refuses a Session that only exists in an event body. For a real one, `sell`."""
    session = stripe_fixture("checkout.session")
    metadata = {"email": email, "name": name, "track": track, "anonymous_checkout": "true"}
    session.update(
        id=session_id or f"cs_test_{secrets.token_hex(12)}",
        status="complete",
        payment_status="paid",
        customer_email=email,
        metadata=metadata,
        amount_total=49_900,
        currency="usd",
        payment_intent=f"pi_{secrets.token_hex(12)}",
        mode="payment",
    )
    return session


def event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    evt = stripe_fixture("event")
    evt.update(
        id=event_id or f"evt_{secrets.token_hex(12)}",
        type=type_,
        created=int(time.time()),
        data={"object": obj},
    )
    return evt


def signed(
    evt: dict[str, Any] | str, secret: str, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    payload = evt if isinstance(evt, str) else json.dumps(evt)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


# ---- real sales: our checkout endpoint creates the Session, the sandbox takes the card ----

CHECKOUT = "/api/payments/create-anonymous-checkout/"


async def sell(
    api: httpx.AsyncClient,
    sandbox: httpx.AsyncClient,
    email: str,
    track: str = "DP",
    name: str = "Ada Lovelace",
    **pay: Any,
) -> dict[str, Any]:
    """One sale, as a student makes it; Stripe's copy of the paid Session comes back, for a
    caller to deliver its own signed events about it. Whatever webhooks the sandbox sends
    meanwhile go where it is pointed (off, or lost, is up to the caller). `pay` goes to
    the sandbox's pay control (e.g. `async=True` for a delayed payment method)."""
    r = await api.post(CHECKOUT, json={"email": email, "name": name, "track": track})
    assert r.status_code == 200, r.text
    session_id = r.json()["sessionId"]
    paid = await sandbox.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json=pay)
    assert paid.status_code == 200, paid.text
    session: dict[str, Any] = paid.json()["checkout_session"]
    return session


async def sell_many(
    api_url: str,
    sandbox_url: str,
    emails: list[str],
    track: str = "DP",
    concurrency: int = 16,
) -> list[dict[str, Any]]:
    """`sell` for each email, at most `concurrency` at a time; the Sessions in email order."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as api,
        httpx.AsyncClient(base_url=sandbox_url, timeout=60, limits=limits) as sandbox,
    ):

        async def one(email: str) -> dict[str, Any]:
            async with semaphore:
                return await sell(api, sandbox, email, track)

        return list(await asyncio.gather(*(one(e) for e in emails)))


def binary(name: str) -> str:
    """A server binary installed into the virtualenv by `make install`."""
    path = shutil.which(name) or str(ROOT / ".venv" / "bin" / name)
    require(Path(path).exists(), f"the {name} binary", "`make install` puts it in .venv/bin")
    return path
