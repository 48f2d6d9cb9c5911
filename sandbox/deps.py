"""Request-scoped helpers shared by the routers: the sandbox objects, parameters, request ids."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.params import Params, decode
from sandbox.service import RequestContext, StripeSandbox
from sandbox.store import new_id
from sandbox.webhooks import WebhookDispatcher


def get_sandbox(request: Request) -> StripeSandbox:
    return request.app.state.sandbox


def get_dispatcher(request: Request) -> WebhookDispatcher:
    return request.app.state.dispatcher


SandboxDep = Annotated[StripeSandbox, Depends(get_sandbox)]
DispatcherDep = Annotated[WebhookDispatcher, Depends(get_dispatcher)]


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or new_id("req_", 14)


def request_context(request: Request) -> RequestContext:
    return RequestContext(
        request_id=request_id(request),
        idempotency_key=request.headers.get("idempotency-key"),
    )


async def form_params(request: Request) -> Params:
    body = await request.body()
    return decode(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def query_params(request: Request) -> Params:
    return decode(request.query_params.multi_items())


def stripe_json(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Stripe answers with pretty-printed JSON."""
    return Response(
        content=json.dumps(body, indent=2).encode("utf-8"),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


class RequestIdMiddleware:
    """Gives every request a Stripe-style `Request-Id` (also the `event.request.id`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_id("req_", 14)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"request-id" for name, _ in headers):
                    headers.append((b"request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)
