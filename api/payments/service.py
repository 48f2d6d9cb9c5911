"""Payments rules: create a checkout, accept Stripe's webhooks, answer verify-session.

Every path that can fulfil a payment (webhook, verify-session, reconciliation) goes
through `start_enrollment`, which starts the one workflow keyed by the Session id.
"""

import hashlib
import hmac
import json
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
import stripe
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlmodel import Session
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import QueryRejectCondition
from temporalio.service import RPCError, RPCStatusCode

from api.errors import AppError, NotFound, Unavailable
from api.payments.schemas import CheckoutCreate, StripeEvent
from core import enrollment_start, metrics
from core import repository as repo
from core.contracts import (
    ACCESS_ENDED_STATUSES,
    READY_TO_LAND,
    SA_STATUS,
    EnrollmentInput,
    EnrollmentState,
    EnrollmentStatus,
    Step,
    ToolStatus,
    workflow_id_for,
)
from core.crypto import new_token, token_hash
from core.db import session_scope
from core.fulfilment import FulfilmentDecision, Verdict, decide
from core.models import Enrollment, utcnow
from core.security import TokenPair, issue_tokens
from core.settings import Settings
from core.stripe_gateway import CHECKOUT_SESSION_PLACEHOLDER, StripeGateway
from core.tracks import TOOL_LABELS, TRACKS
from core.urls import is_allowed_redirect
from support.revocations import REVOCATION_EVENTS, handle_revocation_event
from workflows.enrollment import EnrollmentWorkflow

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^cs_(test|live)_[A-Za-z0-9]{8,200}$")

# Each Temporal read. A query waits for the worker (and behind any workflow task the run has
# in progress); past this the memo, what the run published at its last milestone (status
# change, or the student able to land), answers instead. Not shorter: under overload a
# query given up on is still run, and its fallback adds load (make bench, 200 callers
# without pause: 0.5 s gave 31 503s in 6,216 polls; 2 s, none).
QUERY_TIMEOUT = timedelta(seconds=2)


class TemporalDown(Unavailable):
    error = "Enrollment service unavailable"


class StripeTestModeRefused(AppError):
    """A test-mode Stripe object in production (see `Settings.accepts_stripe_mode`)."""

    error = "Test mode not accepted"


# ---- create-anonymous-checkout -------------------------------------------------------


def _redirect(url: str | None, default: str, settings: Settings, field: str) -> str:
    url = url or default
    if not is_allowed_redirect(url, settings.redirect_origins):
        raise AppError(
            f"{field} must be on an allowed origin", error="Invalid redirect URL", field=field
        )
    return url


def _with_session_placeholder(url: str) -> str:
    if CHECKOUT_SESSION_PLACEHOLDER in url:
        return url
    parts = urlsplit(url)
    query = (
        parts.query + "&" if parts.query else ""
    ) + f"session_id={CHECKOUT_SESSION_PLACEHOLDER}"
    return urlunsplit(parts._replace(query=query))


def create_checkout(
    db: Session, gateway: StripeGateway, settings: Settings, body: CheckoutCreate
) -> tuple[dict[str, Any], str]:
    """Returns the Stripe Session and the browser nonce to set as an HttpOnly cookie."""
    base = settings.public_base_url
    success_url = _redirect(body.success_url, f"{base}/payment/success", settings, "success_url")
    cancel_url = _redirect(body.cancel_url, f"{base}/payment/cancel", settings, "cancel_url")
    track = TRACKS[body.track]
    nonce = new_token()
    try:
        session = gateway.create_checkout_session(
            email=body.email,
            name=body.name,
            track=track,
            success_url=_with_session_placeholder(success_url),
            cancel_url=cancel_url,
            idempotency_key=f"checkout-{token_hash(nonce)[:32]}",
        )
    except stripe.StripeError as err:
        log.warning("stripe refused checkout creation: %s", type(err).__name__)
        raise AppError(
            "The payment provider did not accept the request; please try again.",
            status_code=502,
            error="Payment provider error",
        ) from None
    enrollment = Enrollment(
        checkout_session_id=session["id"],
        workflow_id=workflow_id_for(session["id"]),
        email=body.email,
        name=body.name,
        track=body.track,
        status=EnrollmentStatus.CHECKOUT_CREATED,
        amount=session.get("amount_total"),
        currency=session.get("currency"),
        browser_nonce_hash=token_hash(nonce),
    )
    db.add(enrollment)
    db.flush()
    repo.add_audit(db, "checkout_created", actor="visitor", enrollment_id=enrollment.id)
    metrics.CHECKOUTS_CREATED.labels(body.track).inc()
    return session, nonce


# ---- starting the workflow (shared by webhook, verify-session, reconciliation) -------


# `enrollment_input` and `start_enrollment` live in core/enrollment_start.py, shared with
# reconciliation and the support tools; here Temporal being down becomes a 503.


async def start_enrollment(client: Client, settings: Settings, inp: EnrollmentInput) -> str:
    """Start the enrollment once. 'started': its workflow runs (new, or found running);
    'already_started': it ran to the end before. Raises TemporalDown."""
    try:
        return await enrollment_start.start_enrollment(client, settings, inp)
    except enrollment_start.TemporalUnavailable:
        raise TemporalDown("Could not start the enrollment; please retry shortly.") from None


# ---- webhook -------------------------------------------------------------------------


async def handle_webhook(
    payload: bytes,
    signature: str | None,
    gateway: StripeGateway,
    client: Client,
    settings: Settings,
    engine: sa.Engine,
) -> str:
    if not signature:
        raise AppError("Missing Stripe-Signature header", error="Invalid signature")
    try:
        # In a worker thread: hashing and parsing up to 512 KB, and splitting a signature
        # header of any length, are not the event loop's work.
        event = await run_in_threadpool(gateway.verify_webhook, payload, signature)
    except stripe.SignatureVerificationError:
        raise AppError(
            "The signature does not match the payload", error="Invalid signature"
        ) from None
    except ValueError:
        raise AppError("The body is not a Stripe event", error="Invalid payload") from None
    if not settings.accepts_stripe_mode(livemode=event.get("livemode") is True):
        raise StripeTestModeRefused("This deployment does not act on Stripe test-mode events.")
    try:
        # Strict, as published: the envelope the handlers read, sized for the stripe_event row.
        StripeEvent.model_validate(event, strict=True)
    except ValidationError:
        raise AppError("The body is not a Stripe event", error="Invalid payload") from None
    etype: str = event["type"]
    obj: dict[str, Any] = event["data"]["object"]
    session_id = obj.get("id") if obj.get("object") == "checkout.session" else None
    # Blocking DB writes run in the thread pool: the event loop keeps acknowledging.
    await run_in_threadpool(
        _in_transaction, engine, repo.record_stripe_event,
        event["id"], etype, event.get("created"), session_id,
    )  # fmt: skip
    outcome = await _dispatch(etype, obj, gateway, client, settings, engine)
    metrics.WEBHOOK_EVENTS.labels(etype, outcome).inc()
    await run_in_threadpool(
        _in_transaction, engine, repo.set_stripe_event_outcome, event["id"], outcome
    )
    log.info(
        "webhook handled", extra={"event_id": event["id"], "event_type": etype, "outcome": outcome}
    )
    return outcome


async def _dispatch(
    etype: str,
    obj: dict[str, Any],
    gateway: StripeGateway,
    client: Client,
    settings: Settings,
    engine: sa.Engine,
) -> str:
    source = f"webhook:{etype}"
    if etype in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        # The body only names the Session: what was paid is read from Stripe itself.
        decision = await _decide(obj["id"], source, gateway, engine, settings)
        if decision.verdict == Verdict.UNPAID and etype == "checkout.session.completed":
            await run_in_threadpool(
                _mark_unpaid, engine, obj["id"], EnrollmentStatus.PAYMENT_PENDING
            )
            return "awaiting_payment"
        return await _fulfil(decision, client, settings)
    if etype == "checkout.session.async_payment_failed":
        return (
            "marked_failed"
            if await run_in_threadpool(
                _mark_unpaid, engine, obj["id"], EnrollmentStatus.PAYMENT_FAILED
            )
            else "ignored"
        )
    if etype == "checkout.session.expired":
        return (
            "marked_expired"
            if await run_in_threadpool(_mark_unpaid, engine, obj["id"], EnrollmentStatus.EXPIRED)
            else "ignored"
        )
    if etype == "payment_intent.succeeded":
        if (obj.get("metadata") or {}).get("anonymous_checkout") != "true":
            return "ignored"
        try:
            session = await run_in_threadpool(gateway.find_session_for_payment_intent, obj["id"])
        except stripe.StripeError:
            raise Unavailable("Could not reach Stripe; please redeliver.") from None
        if session is None:
            return "no_paid_session"
        decision = await _decide(session["id"], source, gateway, engine, settings)
        return await _fulfil(decision, client, settings)
    if etype in REVOCATION_EVENTS:  # refunds and disputes: RevokeWorkflow (support/revocations.py)
        try:
            return await handle_revocation_event(etype, obj, client, settings, engine)
        except enrollment_start.TemporalUnavailable:
            raise TemporalDown("Could not start the revocation; please redeliver.") from None
    return "ignored"


async def _decide(
    session_id: str, source: str, gateway: StripeGateway, engine: sa.Engine, settings: Settings
) -> FulfilmentDecision:
    """The fulfilment gate for a webhook: Stripe unreachable means 503, so it redelivers."""
    try:
        return await run_in_threadpool(decide, session_id, source, gateway, engine, settings)
    except stripe.StripeError:
        raise Unavailable("Could not reach Stripe; please redeliver.") from None


# A webhook's outcome for each verdict that does not start anything.
VERDICT_OUTCOMES = {
    Verdict.UNPAID: "no_paid_session",
    Verdict.EXPIRED: "expired",
    Verdict.NOT_OURS: "not_an_enrollment",
    Verdict.MISMATCH: "refused",
    Verdict.ENDED: "access_ended",
}


def _in_transaction(engine: sa.Engine, query: Callable[..., Any], *args: Any) -> Any:
    with session_scope(engine) as db:
        return query(db, *args)


def _mark_unpaid(engine: sa.Engine, checkout_session_id: str, status: str) -> bool:
    with session_scope(engine) as db:
        moved = repo.mark_unpaid_enrollment(db, checkout_session_id, status)
        if moved:
            enrollment = repo.get_enrollment_by_session(db, checkout_session_id)
            repo.add_audit(
                db,
                "payment_status",
                actor="stripe",
                enrollment_id=enrollment.id if enrollment else None,
                status=status,
            )
    return bool(moved)


async def _fulfil(decision: FulfilmentDecision, client: Client, settings: Settings) -> str:
    try:
        if decision.verdict == Verdict.FULFILLED:
            return await enrollment_start.find_enrollment(client, decision.checkout_session_id)
    except enrollment_start.TemporalUnavailable:
        raise TemporalDown("Could not read the enrollment; please redeliver.") from None
    if not decision.may_start:
        return VERDICT_OUTCOMES[decision.verdict]
    assert decision.inp is not None
    return await start_enrollment(client, settings, decision.inp)


# ---- verify-session ------------------------------------------------------------------


@dataclass
class Verification:
    state: EnrollmentState
    ready: bool
    # Nothing more will happen on its own (held, refused, failed run): a person decides.
    closed: bool = False

    @property
    def version(self) -> str:
        """A short tag of what a caller has seen: it changes whenever the state moves."""
        seen = [self.state.status, self.ready, self.closed, self.state.progress("staff")]
        return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:16]


class FinishedStates:
    """Results of completed enrollment runs, kept briefly in this process.

    The success page polls once a second and a completed run's result never changes, so
    repeat polls need not ask Temporal for the same history again. Entries expire within
    `ttl_s` so a support replay (a new run of the same workflow id) shows within that; each
    between 3/4 and all of it, so states cached together are not all fetched again in the
    same second (make bench: 100 at once doubled that second's p99)."""

    def __init__(self, size: int = 4096, ttl_s: float = 15.0) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._items: OrderedDict[str, tuple[float, EnrollmentState]] = OrderedDict()

    def get(self, session_id: str) -> EnrollmentState | None:
        item = self._items.get(session_id)
        if item is None or item[0] < time.monotonic():
            self._items.pop(session_id, None)
            return None
        return item[1]

    def put(self, session_id: str, state: EnrollmentState) -> None:
        ttl = self.ttl_s * random.uniform(0.75, 1.0)
        self._items[session_id] = (time.monotonic() + ttl, state)
        self._items.move_to_end(session_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


async def read_enrollment(
    client: Client,
    gateway: StripeGateway,
    settings: Settings,
    engine: sa.Engine,
    session_id: str,
    finished: FinishedStates | None = None,
) -> Verification:
    """The enrollment as its workflow knows it: one query while it runs (the common case:
    one round trip), its result once it completed, Stripe before it exists."""
    if finished is not None and (state := finished.get(session_id)) is not None:
        return Verification(state, True)
    handle: WorkflowHandle[Any, EnrollmentState] = client.get_workflow_handle_for(
        EnrollmentWorkflow.run, workflow_id_for(session_id)
    )
    try:
        state = await handle.query(
            EnrollmentWorkflow.state,
            reject_condition=QueryRejectCondition.NOT_OPEN,
            rpc_timeout=QUERY_TIMEOUT,
        )
    except WorkflowQueryRejectedError as closed:  # not running: its status says why
        return await _closed(handle, closed.status, session_id, finished)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return await _before_workflow(client, gateway, settings, engine, session_id)
    except (WorkflowQueryFailedError, RuntimeError):
        pass
    else:
        if state is not None:
            return Verification(state, state.student_ready)
    # No worker answered in time (or it has not run yet): what the workflow last published.
    return await _described(handle, session_id)


async def _described(handle: WorkflowHandle[Any, EnrollmentState], session_id: str) -> Verification:
    try:
        desc = await handle.describe(rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, RuntimeError):
        raise TemporalDown("Could not read the enrollment; please retry shortly.") from None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        state = await _state_from_memo(desc, session_id)
        return Verification(state, state.student_ready)
    return await _closed(handle, desc.status, session_id)


async def _closed(
    handle: WorkflowHandle[Any, EnrollmentState],
    status: WorkflowExecutionStatus | None,
    session_id: str,
    finished: FinishedStates | None = None,
) -> Verification:
    if status == WorkflowExecutionStatus.COMPLETED:
        # The result is in history: no worker needed to read it.
        try:
            state = await handle.result(rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, RuntimeError):
            raise TemporalDown("Could not read the enrollment; please retry shortly.") from None
        if finished is not None:
            finished.put(session_id, state)
        return Verification(state, True)
    # Failed, terminated or timed out: a person must look; the student sees it plainly.
    state = _placeholder(
        session_id,
        EnrollmentStatus.NEEDS_ATTENTION,
        "support",
        "Our team is reviewing your enrollment",
    )
    state.needs_attention = True
    return Verification(state, False, closed=True)


async def _state_from_memo(desc: WorkflowExecutionDescription, session_id: str) -> EnrollmentState:
    memo = await desc.memo()
    progress = memo.get("progress") or {}
    steps = [
        Step(s["key"], s["label"], s["status"], s.get("detail", ""))
        for s in progress.get("steps", [])
    ]
    state = EnrollmentState(
        checkout_session_id=session_id,
        email="",
        track="",
        status=desc.typed_search_attributes.get(SA_STATUS) or EnrollmentStatus.PAID,
        steps=steps,
        needs_attention=bool(progress.get("needs_attention")),
        student_ready=bool(memo.get("student_ready")),
    )
    return state


def _placeholder(session_id: str, status: str, key: str, label: str) -> EnrollmentState:
    return EnrollmentState(
        checkout_session_id=session_id,
        email="",
        track="",
        status=status,
        steps=[Step(key, label, "running")],
    )


async def _before_workflow(
    client: Client,
    gateway: StripeGateway,
    settings: Settings,
    engine: sa.Engine,
    session_id: str,
) -> Verification:
    """No workflow (yet, or its history is gone): the fulfilment gate decides. Paid, ours
    and never fulfilled means fulfil now (the webhook may be late); otherwise the database
    answers, and nothing whose access ended is ever started again."""
    try:
        decision = await run_in_threadpool(
            decide, session_id, "verify-session", gateway, engine, settings
        )
    except stripe.InvalidRequestError as err:
        if err.http_status == 404:
            raise NotFound("No checkout session with this id", error="Unknown session") from None
        raise AppError(
            "Stripe refused the lookup", status_code=502, error="Payment provider error"
        ) from None
    except stripe.StripeError:
        raise AppError(
            "Could not reach the payment provider", status_code=502, error="Payment provider error"
        ) from None
    verdict = decision.verdict
    if verdict == Verdict.EXPIRED:
        raise AppError(
            "This checkout expired before payment. Start again to enroll.",
            status_code=410,
            error="Checkout expired",
        )
    if verdict == Verdict.NOT_OURS:
        raise NotFound("This checkout is not an Onramp enrollment", error="Unknown session")
    if verdict == Verdict.FULFIL:
        assert decision.inp is not None
        await start_enrollment(client, settings, decision.inp)
        return Verification(
            _placeholder(session_id, EnrollmentStatus.PAID, "payment", "Payment confirmed"), False
        )
    if verdict == Verdict.UNPAID:
        return Verification(
            _placeholder(
                session_id, "AWAITING_PAYMENT", "payment", "Waiting for payment confirmation"
            ),
            False,
        )
    if verdict == Verdict.FULFILLED and decision.status in READY_TO_LAND:
        # Landed before and its history is gone: the database is the record.
        state = _placeholder(session_id, decision.status, "done", "Enrollment complete")
        state.steps[0].status = "done"
        state.student_ready = True
        return Verification(state, True)
    # Ended, refused, or paid but its run is gone before it finished: a person decides.
    state = _placeholder(
        session_id,
        decision.status or EnrollmentStatus.NEEDS_ATTENTION,
        "support",
        _HELD_LABELS[verdict],
    )
    state.needs_attention = True
    return Verification(state, False, closed=True)


_HELD_LABELS = {
    Verdict.ENDED: "This enrollment is closed; contact support",
    Verdict.MISMATCH: "Our team is reviewing your payment",
    Verdict.FULFILLED: "Our team is reviewing your enrollment",
}


def success_body(
    engine: sa.Engine,
    settings: Settings,
    state: EnrollmentState,
    browser_nonce: str | None,
    viewer_id: int | None = None,
) -> tuple[dict[str, Any], TokenPair | None]:
    """The contract's 200 body, for the buyer: the browser that started the checkout, or
    the enrolled student logged in. Anyone else holding the session id (it leaks through
    Referer headers, logs and screenshots) gets the status and step labels only.

    The page polls it: one statement on an autocommit connection (no transaction to end),
    and a write transaction only to hand out the one auto-login."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rows = repo.landing_rows(conn, state.checkout_session_id)
    if not rows:
        raise NotFound("No enrollment for this session", error="Unknown session")
    view = rows[0]
    tools = {r.tool: r for r in rows if r.tool is not None}
    track_tools = TRACKS[view.track].tools
    if not _is_buyer(view, browser_nonce, viewer_id):
        return {
            "success": True,
            "login_required": True,
            "login_reason": LoginReason.OTHER_BROWSER,
            "track": view.track,
            "enrollment_status": state.status,
            "tools": [
                {"tool": t, "label": TOOL_LABELS[t], "status": _tool_status(tools, t)}
                for t in track_tools
            ],
            "progress": state.progress("public"),
        }, None
    tokens = (
        _auto_login(engine, settings, view) if _auto_login_allowed(view, browser_nonce) else None
    )

    def url(tool: str) -> str:
        record = tools.get(tool)
        return record.url if record and record.status == ToolStatus.READY else ""

    body: dict[str, Any] = {
        "success": True,
        "user": {
            "id": view.user_id,
            "email": view.email,
            "name": view.name,
            "role": view.role,
            "track": view.track,
            "enrollment_status": view.enrollment_status,
        },
        "login_required": tokens is None,
        "login_reason": None if tokens is not None else _why_no_login(view, viewer_id),
        "track": view.track,
        "tools_provisioned": all(
            tools.get(t) is not None and tools[t].status == ToolStatus.READY for t in track_tools
        ),
        "workspace_url": url("codeserver"),
        "superset_url": url("superset"),
        "prefect_url": url("prefect"),
        "jupyter_url": url("jupyter"),
        "enrollment_status": state.status,
        "tools": [
            {
                "tool": t,
                "label": TOOL_LABELS[t],
                "status": _tool_status(tools, t),
                "url": url(t),
                "development": bool(tools[t].development) if t in tools else False,
            }
            for t in track_tools
        ],
        "progress": state.progress("student"),
    }
    if tokens is not None:
        body["access"], body["refresh"] = tokens.access, tokens.refresh
    return body, tokens


def stream_audience(
    engine: sa.Engine, session_id: str, browser_nonce: str | None, viewer_id: int | None
) -> str:
    """Step details in plain words for the buyer (this browser, or the student logged in);
    none for anyone else holding the id."""
    with engine.connect() as conn:
        row = repo.viewer_row(conn, session_id)
    return "student" if row is not None and _is_buyer(row, browser_nonce, viewer_id) else "public"


def _auto_login(engine: sa.Engine, settings: Settings, view: Any) -> TokenPair | None:
    """Claim the enrollment's one auto-login (the first caller in the window wins) and issue
    its tokens in the same transaction."""
    with session_scope(engine) as db:
        user = repo.get_user(db, view.user_id)
        assert user is not None and user.id is not None
        if user.email_proven or not user.is_active:
            return None  # the owner proved the address since (or access ended): it lapsed
        window = timedelta(minutes=settings.auto_login_window_minutes)
        if not repo.claim_auto_login(db, view.id, not_before=utcnow() - window):
            return None
        tokens = issue_tokens(db, settings, user)
        repo.add_audit(db, "auto_login", actor="student", enrollment_id=view.id, user_id=user.id)
        return tokens


class LoginReason(StrEnum):
    """Why the success page asks the buyer to log in, so it can say so plainly."""

    OTHER_BROWSER = "other_browser"  # this browser did not start the checkout
    EXISTING_ACCOUNT = "existing_account"  # the email already had an account: attached
    PASSWORD_SET = "password_set"  # the owner chose a password since: log in with it
    ALREADY_USED = "already_used"  # this checkout's one automatic login was used
    LOGGED_IN = "logged_in"  # the student is logged in already (another device)
    EXPIRED = "expired"  # the automatic login's window passed


def _why_no_login(view: Any, viewer_id: int | None) -> LoginReason:
    if viewer_id is not None and viewer_id == view.user_id:
        return LoginReason.LOGGED_IN
    if not view.account_created:
        return LoginReason.EXISTING_ACCOUNT
    if view.email_verified_at is not None or view.has_password:
        return LoginReason.PASSWORD_SET
    if view.tokens_issued_at is not None:
        return LoginReason.ALREADY_USED
    return LoginReason.EXPIRED


def _tool_status(tools: dict[str, Any], tool: str) -> str:
    return str(tools[tool].status) if tool in tools else ToolStatus.PENDING


def _nonce_matches(enrollment: Any, browser_nonce: str | None) -> bool:
    return bool(
        enrollment.browser_nonce_hash
        and browser_nonce
        and hmac.compare_digest(token_hash(browser_nonce), enrollment.browser_nonce_hash)
    )


def _is_buyer(enrollment: Any, browser_nonce: str | None, viewer_id: int | None) -> bool:
    if _nonce_matches(enrollment, browser_nonce):
        return True
    return viewer_id is not None and viewer_id == enrollment.user_id and enrollment.is_active


def _auto_login_allowed(enrollment: Any, browser_nonce: str | None) -> bool:
    """Tokens only for the browser that paid, for an account this payment created, while
    the enrollment gives access."""
    return bool(
        enrollment.enrollment_row_status not in ACCESS_ENDED_STATUSES
        and enrollment.is_active
        and enrollment.email_verified_at is None
        and not enrollment.has_password
        and enrollment.account_created
        and _nonce_matches(enrollment, browser_nonce)
        and enrollment.tokens_issued_at is None
    )
