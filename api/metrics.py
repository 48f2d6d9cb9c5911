"""GET /metrics: the API's Prometheus metrics (text exposition format).

Not behind a login, like every Prometheus target: expose it only on the internal network
(the compose file does not publish it through a proxy; see the README).
"""

import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.metrics import HTTP_REQUEST_SECONDS

router = APIRouter(tags=["operations"], include_in_schema=False)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware:
    """Times every HTTP request into `onramp_http_request_seconds`, labelled by the route's
    template (`/api/payments/verify-session/`, never the raw path: bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUEST_SECONDS.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - began
            )
