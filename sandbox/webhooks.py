"""Webhook delivery as Stripe does it: signed POSTs in the background, retried with backoff."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import stripe

from sandbox.errors import StripeError
from sandbox.service import StripeSandbox
from sandbox.store import DeliveryAttempt

logger = logging.getLogger(__name__)

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 16, 30, 60)
ATTEMPT_TIMEOUT = 10.0
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature` header: t=<unix>,v1=HMAC-SHA256(secret, f"{t}.{payload}")."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


class WebhookDispatcher:
    """Sends each new event to the sandbox's current webhook URL without blocking requests."""

    def __init__(
        self,
        sandbox: StripeSandbox,
        *,
        secret: str,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self._sandbox = sandbox
        self._secret = secret
        self._retry_delays = tuple(retry_delays)
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client_or_new()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            logger.info("abandoning %d webhook deliveries still in flight", len(tasks))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _client_or_new(self) -> httpx.AsyncClient:
        if self._client is None:
            # Never route loopback webhooks through a proxy picked up from the environment.
            self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, trust_env=False
            )
        return self._client

    def schedule(self, event_id: str) -> None:
        """Start delivering `event_id`; safe to call from the event loop or from any thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (self._loop is None or running is self._loop):
            self._spawn(event_id)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, event_id)
        else:
            logger.warning("no event loop to deliver %s; it stays pending", event_id)

    def _spawn(self, event_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(event_id))
        # The loop holds tasks weakly; keep a reference until the task is done.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event_id: str) -> None:
        schedule = (0.0, *self._retry_delays)
        for index, delay in enumerate(schedule):
            if delay:
                await asyncio.sleep(delay)
            url = self._sandbox.webhook_url
            if url is None:
                self._sandbox.set_delivery_status(event_id, "no_endpoint")
                logger.info("event %s not sent: no webhook URL", event_id)
                return
            if await self.attempt(event_id, url):
                self._sandbox.set_delivery_status(event_id, "delivered")
                return
            if index + 1 < len(schedule):
                logger.info("event %s: retrying in %ss", event_id, schedule[index + 1])
        self._sandbox.set_delivery_status(event_id, "failed")
        logger.warning("event %s: giving up after %d attempts", event_id, len(schedule))

    async def attempt(self, event_id: str, url: str) -> bool:
        """One signed POST; records the attempt and tells whether the endpoint took it (2xx)."""
        payload = self._sandbox.event_payload(event_id)
        number = self._sandbox.next_attempt_number(event_id)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": sign(payload, self._secret),
        }
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await self._client_or_new().post(
                url, content=payload.encode("utf-8"), headers=headers
            )
            status_code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = int((time.monotonic() - started) * 1000)
        self._sandbox.record_attempt(
            event_id,
            DeliveryAttempt(
                number=number,
                at=int(time.time()),
                url=url,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
            ),
        )
        ok = status_code is not None and 200 <= status_code < 300
        logger.info(
            "event %s attempt %d to %s: %s",
            event_id,
            number,
            url,
            status_code if status_code is not None else error,
        )
        return ok

    async def resend(self, event_id: str) -> bool:
        """A manual resend from the dashboard: one attempt, answered synchronously."""
        self._sandbox.event_payload(event_id)  # unknown ids fail here with a 404
        url = self._sandbox.webhook_url
        if url is None:
            raise StripeError("No webhook URL is configured.", status=409, code="no_webhook_url")
        ok = await self.attempt(event_id, url)
        if ok:
            self._sandbox.set_delivery_status(event_id, "delivered")
        return ok
