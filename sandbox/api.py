"""The Stripe REST API subset under /v1, as the official SDK calls it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sandbox.deps import (
    SandboxDep,
    form_params,
    query_params,
    request_context,
    request_id,
    stripe_json,
)
from sandbox.errors import StripeError
from sandbox.params import Params
from sandbox.service import RequestContext, StripeSandbox

IDEMPOTENCY_KEY_MAX = 255


def _presented_key(request: Request) -> str | None:
    """The secret key from `Bearer <key>` or HTTP Basic with the key as user (curl -u)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user.partition(":")[0] or None
    return None


def require_api_key(request: Request) -> None:
    presented = _presented_key(request)
    if presented is None:
        raise StripeError(
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
            "or we can help at https://support.stripe.com/.",
            status=401,
        )
    expected: str = request.app.state.api_key
    if not secrets.compare_digest(presented.encode(), expected.encode()):
        masked = presented[:8] + "*" * 4 + presented[-4:] if len(presented) > 12 else "***"
        raise StripeError(f"Invalid API Key provided: {masked}", status=401, code="api_key_invalid")


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
ContextDep = Annotated[RequestContext, Depends(request_context)]


async def idempotent(
    request: Request,
    params: Params,
    handler: Callable[[], dict[str, Any]],
) -> Response:
    """Stripe's idempotency: a key replays its first response, or refuses different params."""
    key = request.headers.get("idempotency-key")
    if not key:
        return stripe_json(handler())
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise StripeError(
            f"Idempotency-Key must be at most {IDEMPOTENCY_KEY_MAX} characters long.",
            type="idempotency_error",
        )
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    sandbox: StripeSandbox = request.app.state.sandbox
    replay = sandbox.idempotency_begin(key, (request.method, request.url.path, digest))
    if replay is not None:
        status, body, original_request_id = replay
        return Response(
            content=body,
            status_code=status,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true", "Request-Id": original_request_id},
        )
    try:
        response = stripe_json(handler())
    except BaseException:
        # Requests that fail validation are not saved (Stripe does the same), so a corrected
        # retry under the same key works.
        sandbox.idempotency_abort(key)
        raise
    sandbox.idempotency_finish(
        key, (response.status_code, bytes(response.body), request_id(request))
    )
    return response


@router.post("/checkout/sessions")
async def create_checkout_session(
    request: Request, sandbox: SandboxDep, ctx: ContextDep
) -> Response:
    params = await form_params(request)
    return await idempotent(request, params, lambda: sandbox.create_checkout_session(params, ctx))


@router.get("/checkout/sessions")
async def list_checkout_sessions(request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.list_checkout_sessions(query_params(request)))


@router.get("/checkout/sessions/{session_id}")
async def retrieve_checkout_session(
    session_id: str, request: Request, sandbox: SandboxDep
) -> Response:
    return stripe_json(sandbox.retrieve_checkout_session(session_id, query_params(request)))


@router.get("/checkout/sessions/{session_id}/line_items")
async def list_line_items(session_id: str, request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.list_line_items(session_id, query_params(request)))


@router.post("/checkout/sessions/{session_id}/expire")
async def expire_checkout_session(
    session_id: str, request: Request, sandbox: SandboxDep, ctx: ContextDep
) -> Response:
    params = await form_params(request)
    return await idempotent(
        request, params, lambda: sandbox.expire_checkout_session(session_id, params, ctx)
    )


@router.get("/payment_intents/{intent_id}")
async def retrieve_payment_intent(
    intent_id: str, request: Request, sandbox: SandboxDep
) -> Response:
    return stripe_json(sandbox.retrieve_payment_intent(intent_id, query_params(request)))


@router.get("/charges/{charge_id}")
async def retrieve_charge(charge_id: str, request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.retrieve_charge(charge_id, query_params(request)))


@router.post("/refunds")
async def create_refund(request: Request, sandbox: SandboxDep, ctx: ContextDep) -> Response:
    params = await form_params(request)
    return await idempotent(request, params, lambda: sandbox.create_refund(params, ctx))


@router.get("/refunds/{refund_id}")
async def retrieve_refund(refund_id: str, request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.retrieve_refund(refund_id, query_params(request)))


@router.get("/disputes/{dispute_id}")
async def retrieve_dispute(dispute_id: str, request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.retrieve_dispute(dispute_id, query_params(request)))


@router.get("/events")
async def list_events(request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.list_events(query_params(request)))


@router.get("/events/{event_id}")
async def retrieve_event(event_id: str, request: Request, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.retrieve_event(event_id, query_params(request)))


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def unrecognized(path: str, request: Request) -> Response:
    raise StripeError(
        f"Unrecognized request URL ({request.method}: /v1/{path}). Please see "
        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        status=404,
    )
