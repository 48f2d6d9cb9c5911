"""HTTP routes of the payments API; paths keep the flow document's trailing slashes."""

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send
from temporalio.client import Client

from api.auth.deps import token_user_id
from api.deps import SessionDep, SettingsDep, StripeDep, TemporalDep
from api.errors import NotFound
from api.openapi import GUARDED, RETRY_AFTER, error_responses, link, raw_json_body
from api.payments import checkout, landing, progress, verify, webhook
from api.payments.errors import StripeTestModeRefused
from api.payments.schemas import (
    CheckoutCreate,
    CheckoutCreated,
    CohortList,
    CohortPublic,
    PendingSession,
    StripeEvent,
    VerifiedSession,
    VerifiedSessionLimited,
    WaitlistJoin,
    WaitlistPlace,
    WebhookAck,
)
from api.ratelimit import client_address, rate_limit, unknown_ids_limited
from api.security_cookies import (
    CHECKOUT_COOKIE,
    clear_checkout_cookie,
    set_auth_cookies,
    set_checkout_cookie,
)
from core.cohorts import service as cohorts
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.urls import PAYMENTS_PREFIX, WEBHOOK_PATH

router = APIRouter(prefix=PAYMENTS_PREFIX, tags=["payments"])

SIGNATURE = (
    "Stripe's signature over the exact body, `t=<timestamp>,v1=<hex HMAC-SHA256>`, made "
    "with the endpoint's signing secret (STRIPE_WEBHOOK_SECRET) within the last 5 minutes. "
    "Missing, malformed, stale or not matching: 400."
)

LONG_POLL_MAX_S = 25.0  # verify-session's `wait`: below the usual 30-60 s proxy idle timeouts


@router.post(
    "/create-anonymous-checkout/",
    response_model=CheckoutCreated,
    responses={
        200: {
            "links": {
                "VerifySession": link(
                    "/api/payments/verify-session/",
                    "get",
                    "What the payment of this checkout has set up so far",
                    {"session_id": "$response.body#/sessionId"},
                )
            }
        },
        **error_responses(*GUARDED, 404, 409, 429, 502, 503),
    },
)
async def create_anonymous_checkout(
    body: CheckoutCreate,
    request: Request,
    response: Response,
    db: SessionDep,
    settings: SettingsDep,
    gateway: StripeDep,
) -> CheckoutCreated:
    await rate_limit(request, "checkout", email=body.email)
    session, nonce = await run_in_threadpool(checkout.create_checkout, db, gateway, settings, body)
    set_checkout_cookie(response, settings, nonce)
    return CheckoutCreated(sessionId=session["id"], url=session["url"])


@router.get("/cohorts/", response_model=CohortList)
async def list_cohorts(db: SessionDep) -> CohortList:
    """Each track's next cohort: its start, seats left, and whether it takes a waitlist."""
    views = await run_in_threadpool(cohorts.next_cohorts, db)
    return CohortList(cohorts=[_cohort_public(v) for v in views.values()])


def _cohort_public(v: cohorts.CohortView) -> CohortPublic:
    return CohortPublic(
        code=v.code,
        track=v.track,  # type: ignore[arg-type]
        starts_at=v.starts_at,
        size=v.size,
        seats_left=v.seats_left,
        state=v.state,  # type: ignore[arg-type]
        waitlist=v.state == "sold_out",
    )


@router.post(
    "/waitlist/",
    response_model=WaitlistPlace,
    status_code=201,
    responses={
        200: {"model": WaitlistPlace, "description": "This email was on the waitlist already"},
        **error_responses(*GUARDED, 404, 409, 429),
    },
)
async def join_waitlist(
    body: WaitlistJoin, request: Request, settings: SettingsDep
) -> JSONResponse:
    """A place on a sold-out cohort's waitlist, confirmed by email. A seat that frees up is
    offered to the next person in line, by email, with a personal checkout link."""
    await rate_limit(request, "checkout", email=body.email)
    joined = await run_in_threadpool(
        partial(
            cohorts.join_waitlist,
            request.app.state.engine,
            settings,
            track=body.track,
            code=body.cohort,
            email=body.email,
            name=body.name,
        )
    )
    place = WaitlistPlace(
        cohort=joined.cohort,
        position=joined.position,
        state=joined.state,  # type: ignore[arg-type]
        created=joined.created,
    )
    return JSONResponse(place.model_dump(), status_code=201 if joined.created else 200)


@router.post(
    WEBHOOK_PATH.removeprefix(PAYMENTS_PREFIX),
    response_model=WebhookAck,
    responses=error_responses(*GUARDED, 503),
    openapi_extra=raw_json_body(StripeEvent, "A Stripe event, signed (Stripe-Signature)."),
)
async def stripe_webhook(
    request: Request,
    settings: SettingsDep,
    gateway: StripeDep,
    client: TemporalDep,
    signature: Annotated[str, Header(alias="Stripe-Signature", description=SIGNATURE)],
) -> WebhookAck:
    """Stripe's events: verified over the raw body, stored once by id, then handled."""
    payload = await request.body()
    outcome = await webhook.handle_webhook(
        payload,
        signature,
        gateway,
        client,
        settings,
        request.app.state.engine,
    )
    return WebhookAck(outcome=outcome)


async def checkout_session_id(
    settings: SettingsDep,
    session_id: Annotated[
        str,
        Query(
            pattern=checkout.SESSION_ID.pattern,
            description="The Checkout Session id from the success URL (cs_test_... or cs_live_...)",
        ),
    ],
) -> str:
    """A well-formed Checkout Session id of a mode this deployment acts on."""
    if not settings.accepts_stripe_mode(livemode=session_id.startswith("cs_live_")):
        raise StripeTestModeRefused("This deployment does not accept test-mode sessions.")
    return session_id


async def _read_counted(
    request: Request, client: Client, gateway: StripeGateway, settings: Settings, session_id: str
) -> verify.Verification:
    """The enrollment's state, for verify-session and the stream alike: an id Stripe does
    not know counts in the tighter window of random guesses."""
    async with unknown_ids_limited(request, "verify_session_unknown", NotFound):
        return await verify.read_enrollment(
            client,
            gateway,
            settings,
            request.app.state.engine,
            session_id,
            request.app.state.finished_states,
        )


@router.get(
    "/verify-session/",
    response_model=VerifiedSession | VerifiedSessionLimited,
    responses={
        202: {
            "model": PendingSession,
            "description": "Not ready yet: poll again after `Retry-After` seconds",
            "headers": {"Retry-After": {**RETRY_AFTER, "required": True}},
        },
        **error_responses(400, 404, 410, 429, 502, 503),
    },
)
async def verify_session(
    request: Request,
    response: Response,
    settings: SettingsDep,
    gateway: StripeDep,
    client: TemporalDep,
    session_id: Annotated[str, Depends(checkout_session_id)],
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=LONG_POLL_MAX_S,
            description="Long-poll: hold a 202 up to this many seconds until the state "
            "moves past `since`",
        ),
    ] = 0,
    since: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-f]{16}$", description="The `version` of the last 202 seen"),
    ] = None,
) -> JSONResponse:
    # Both before Temporal or Stripe is asked; an id Stripe does not know (random guesses)
    # is kept in a tighter window of its own.
    await rate_limit(request, "verify_session")
    verification = await _read_counted(request, client, gateway, settings, session_id)
    if wait and since == verification.version and not verification.ready:
        verification = await _moved_past(request, session_id, verification, wait)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if not verification.ready:
        if verification.state.status == "AWAITING_PAYMENT":
            headers["Retry-After"] = "2"
        return JSONResponse(
            # Whoever holds the id sees labels and statuses; no detail, no name, no link.
            PendingSession(
                progress=verification.state.progress("public"), version=verification.version
            ).model_dump(),
            status_code=202,
            headers=headers | {"Retry-After": headers.get("Retry-After", "1")},
        )
    # The page polls this: no database session unless the answer needs one (one thread hop).
    body, tokens = await run_in_threadpool(
        landing.success_body,
        request.app.state.engine,
        settings,
        verification.state,
        request.cookies.get(CHECKOUT_COOKIE),
        token_user_id(request, settings),
    )
    result = JSONResponse(body, headers=headers)
    if tokens is not None:
        set_auth_cookies(result, settings, tokens)
        clear_checkout_cookie(result, settings)  # spent: this browser logged in once
    return result


async def _moved_past(
    request: Request, session_id: str, seen: verify.Verification, wait: float
) -> verify.Verification:
    """Long-poll: the hub's next state of this enrollment, or `seen` after `wait` seconds.
    Beyond the stream bounds it answers at once (the caller polls, as it always could)."""
    hub: progress.ProgressHub = request.app.state.progress_hub
    try:
        slot = hub.reserve(client_address(request))
    except (progress.TooManyStreams, progress.StreamsFull):
        return seen
    watch = hub.watch(session_id)
    try:
        hub.offer(watch, seen)
        return await watch.next(seen.version, wait) or seen
    finally:
        hub.unwatch(watch)
        slot.release()


class EventStream(StreamingResponse):
    """text/event-stream that gives back its stream slot however it ends (finished,
    client gone, server shutting down), even if the body never started.

    Starlette streams under an ASGI 2.3 server (uvicorn) in an anyio task group, a second
    task listening for the disconnect; here one plain waiter on `receive` cancels the
    stream when the client leaves: the same ending, a few kB less for each open stream."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            headers={
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            },
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        streamed = False

        def client_left(_: object) -> None:
            if not streamed:
                streaming.cancel()

        gone = asyncio.ensure_future(_client_gone(receive))
        gone.add_done_callback(client_left)
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone.done() or gone.cancelled():
                raise  # cancelled from outside (shutdown), not by the client leaving
            streaming.uncancel()
        finally:
            streamed = True
            gone.cancel()
            self._release()


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/progress-stream/",
    # Not response_class: that would publish the JSON errors as event streams too.
    response_model=None,
    status_code=200,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `progress` on each step change, then `ready` "
            "(call verify-session once) or `end`; a comment line every "
            "PROGRESS_HEARTBEAT_SECONDS",
        },
        **error_responses(400, 404, 410, 429, 502, 503),
    },
)
async def progress_stream(
    request: Request,
    settings: SettingsDep,
    gateway: StripeDep,
    client: TemporalDep,
    session_id: Annotated[str, Depends(checkout_session_id)],
) -> EventStream:
    """The success page's live progress. It carries steps only, never tokens: on `ready`
    the page calls verify-session once, which logs the paying browser in."""
    await rate_limit(request, "verify_session")
    hub: progress.ProgressHub = request.app.state.progress_hub
    slot = hub.reserve(client_address(request))
    watch = hub.watch(session_id)

    def release() -> None:
        hub.unwatch(watch)
        slot.release()

    try:
        # Nobody in this process has read it yet: one read for every stream opening on it.
        await hub.opened(
            watch, lambda: _read_counted(request, client, gateway, settings, session_id)
        )
        audience = await run_in_threadpool(
            landing.stream_audience,
            request.app.state.engine,
            session_id,
            request.cookies.get(CHECKOUT_COOKIE),
            token_user_id(request, settings),
        )
    except BaseException:
        release()
        raise
    return EventStream(progress.events(watch, audience, settings), release)
