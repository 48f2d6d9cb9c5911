"""Builds the sandbox ASGI app: Stripe API, hosted checkout, webhooks and /_sandbox controls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from sandbox import api, control, hosted
from sandbox.deps import RequestIdMiddleware, stripe_json
from sandbox.errors import StripeError
from sandbox.fixtures import Fixtures
from sandbox.service import StripeSandbox
from sandbox.webhooks import DEFAULT_RETRY_DELAYS, WebhookDispatcher

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "sk_test_sandbox"
EXPIRY_SWEEP_SECONDS = 1.0


def create_app(
    *,
    webhook_url: str | None,
    webhook_secret: str,
    public_url: str,
    api_key: str = DEFAULT_API_KEY,
    fixtures_path: str | None = None,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
) -> FastAPI:
    """A fresh sandbox with its own in-memory state.

    `public_url` is where payers reach it (used in `session.url`); `webhook_url` None records
    events without sending them. Each event is sent once, then retried after each delay in
    `retry_delays` (so `1 + len(retry_delays)` attempts) until an endpoint answers 2xx.
    """
    if not webhook_secret:
        raise ValueError("webhook_secret is required (a whsec_... string)")
    sandbox = StripeSandbox(
        Fixtures.load(fixtures_path), public_url=public_url, webhook_url=webhook_url
    )
    dispatcher = WebhookDispatcher(sandbox, secret=webhook_secret, retry_delays=retry_delays)
    sandbox.on_event = dispatcher.schedule

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await dispatcher.start()
        sweeper = asyncio.create_task(_expire_sessions(sandbox))
        logger.info("stripe sandbox ready at %s (webhooks to %s)", public_url, webhook_url)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await dispatcher.aclose()

    app = FastAPI(
        title="Stripe sandbox", lifespan=lifespan, docs_url="/_sandbox/docs", redoc_url=None
    )
    app.state.sandbox = sandbox
    app.state.dispatcher = dispatcher
    app.state.api_key = api_key
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(StripeError)
    async def stripe_error(_request: Request, exc: StripeError) -> Response:
        return stripe_json(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_control_request(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        error = StripeError(f"Invalid request: {first.get('msg', 'invalid body')}", param=param)
        return stripe_json(error.body(), status_code=400)

    app.include_router(api.router)
    app.include_router(hosted.router)
    app.include_router(control.router)
    return app


async def _expire_sessions(sandbox: StripeSandbox) -> None:
    """Expire Sessions on time even if nobody reads them, so checkout.session.expired is sent."""
    while True:
        await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
        try:
            sandbox.expire_due_sessions()
        except Exception:
            logger.exception("expiry sweep failed")
