"""The API's Prometheus metrics (text exposition format), and the request timer.

Not behind a login, like every Prometheus target. In production they are served only on a
private port (METRICS_HOST:API_METRICS_PORT, which the compose file does not publish);
elsewhere on the app itself, at GET /metrics.
"""

import logging
import time
from wsgiref.simple_server import WSGIServer

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.metrics import HTTP_REQUEST_SECONDS
from core.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"], include_in_schema=False)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def serve_private_metrics(settings: Settings) -> WSGIServer | None:
    """Production's /metrics: its own small server on the private metrics port (a thread of
    the API process, like the worker's); None when API_METRICS_PORT is 0."""
    if not settings.api_metrics_port:
        return None
    server, _ = start_http_server(settings.api_metrics_port, addr=settings.metrics_host)
    log.info("api metrics on %s:%s", settings.metrics_host, settings.api_metrics_port)
    return server


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
