"""Pages are served on one origin, `PUBLIC_BASE_URL`'s: a page asked for on another host
name (127.0.0.1 where the canonical one is localhost) is redirected there first.

The checkout cookie is set on the origin the buyer starts from and Stripe sends them back
to `PUBLIC_BASE_URL`; on two origins the success page would never see the cookie, and a
brand-new buyer would not be logged in. The target is fixed by settings, never taken from
the request, so this is no open redirect. The JSON API, static files and operational
endpoints answer on any host.
"""

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

# Not pages: machine clients and probes address these by whatever name reaches the app.
NOT_PAGES = ("/api/", "/static/", "/metrics", "/docs", "/redoc", "/openapi.json")


class CanonicalOriginMiddleware:
    def __init__(self, app: ASGIApp, public_base_url: str) -> None:
        self.app = app
        parts = urlsplit(public_base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or scope["path"].startswith(NOT_PAGES)
        ):
            await self.app(scope, receive, send)
            return
        host = (Headers(scope=scope).get("host") or "").lower()
        if not host or host == self.host:
            await self.app(scope, receive, send)
            return
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        location = self.origin.encode() + path + (b"?" + query if query else b"")
        await send(
            {
                "type": "http.response.start",
                "status": 308,
                "headers": [
                    (b"location", location),
                    (b"content-length", b"0"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
