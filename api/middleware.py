"""Guards every request and hardens every response: header and body size, content type,
JSON shape, and the security headers (CSP without inline script, no framing, no sniffing,
no referrer). The guards' work is linear in the request's size and, past a few KB, done
in a worker thread: no request can hold up the event loop.

Both are plain ASGI middleware: the body is read once, checked, and replayed unchanged, so
the Stripe webhook still verifies its signature over the exact bytes Stripe sent.
"""

import json
import re
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ratelimit import limiter_for
from core.settings import Settings
from core.urls import WEBHOOK_PATH

API_PREFIX = "/api/"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json",)
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 64 * 1024
# `application/json; charset=utf-8` has 31 characters, a browser's multipart type ~70.
MAX_CONTENT_TYPE_LENGTH = 256
# Every array and object json.loads builds is tracked by the garbage collector: 30,000 of
# them in 64 KB cost it a collection of the whole heap, hundreds of milliseconds on the
# event loop. The API's bodies are flat objects.
MAX_JSON_CONTAINERS = 256
# The nesting scan runs on the event loop for bodies up to INLINE_SCAN_BYTES (well under a
# millisecond); larger ones go to a worker thread, in steps of SCAN_STEP_BYTES. A step is a
# few C-level passes that hold the GIL, so the loop gets it back between steps.
INLINE_SCAN_BYTES = 8 * 1024
SCAN_STEP_BYTES = 32 * 1024
_NOT_BACKSLASH = re.compile(rb"[^\\]")
# Quotes and brackets are all the scan needs; braces count as brackets.
_FOLD_BRACES = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


class RequestRejected(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.headers = dict(SECURITY_HEADERS)
        if hsts:
            self.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        api = scope["path"].startswith(API_PREFIX)

        async def send_hardened(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
                if api and "cache-control" not in headers:
                    # API answers are personal or carry tokens: never in a shared cache.
                    headers["Cache-Control"] = "no-store"
            await send(message)

        try:
            await self.app(scope, receive, send_hardened)
        except Exception:
            # The app's last-resort handler answers outside this middleware; answer here so
            # a 500 carries the headers too, then let it log the error as usual.
            if not started:
                await send_json(
                    send_hardened,
                    500,
                    {
                        "error": "Internal error",
                        "message": "Something went wrong on our side; please retry.",
                    },
                )
            raise


class RequestGuardMiddleware:
    """URL and headers: bounded size. Bodies: bounded size; JSON only under /api/; UTF-8;
    bounded nesting."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _check_head(scope)
        except RequestRejected as err:
            await send_json(send, err.status, {"error": err.error, "message": err.message})
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._checked_body(scope, receive)
        except RequestRejected as err:
            await send_json(send, err.status, {"error": err.error, "message": err.message})
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, checked; None when the request has no body at all."""
        path: str = scope["path"]
        headers = Headers(scope=scope)
        limit = (
            self.settings.max_webhook_body_bytes
            if path == WEBHOOK_PATH
            else self.settings.max_body_bytes
        )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise RequestRejected(400, "Invalid request", "Content-Length is not a number.")
            if int(length) > limit:
                raise _too_large(limit)
            if int(length) == 0:
                return None
        elif "transfer-encoding" not in headers:
            return None
        content_type = headers.get("content-type")
        if content_type is not None and len(content_type) > MAX_CONTENT_TYPE_LENGTH:
            # Not one of ours, and parsing its parameters (python-multipart's parser, for
            # forms) takes time that grows with them.
            raise RequestRejected(
                415,
                "Unsupported media type",
                f"A Content-Type has at most {MAX_CONTENT_TYPE_LENGTH} characters.",
            )
        is_api = path.startswith(API_PREFIX)
        if is_api:
            _check_json_type(content_type)
        body = await _read_body(receive, limit)
        if is_api:
            # A webhook's body is parsed only once its signature verifies.
            containers = None if path == WEBHOOK_PATH else MAX_JSON_CONTAINERS
            check = (body, self.settings.max_json_depth, containers)
            if len(body) > INLINE_SCAN_BYTES:
                await run_in_threadpool(_check_json_text, *check)
            else:
                _check_json_text(*check)
        return body


def _too_large(limit: int) -> RequestRejected:
    return RequestRejected(
        413, "Payload too large", f"Request bodies are limited to {limit} bytes."
    )


def _check_head(scope: Scope) -> None:
    # The query string, cookies and every header lookup are parsed in Python, in time that
    # grows with them; the server (uvicorn with httptools) allows a 64 KB URL and headers
    # of any size.
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    if len(path) + len(scope["query_string"]) > MAX_URL_BYTES:
        raise RequestRejected(414, "URI too long", f"URLs are limited to {MAX_URL_BYTES} bytes.")
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    if len(headers) > MAX_HEADER_COUNT or (
        sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES
    ):
        raise RequestRejected(
            431,
            "Request headers too large",
            f"Send at most {MAX_HEADER_COUNT} headers of {MAX_HEADER_BYTES} bytes in all.",
        )


def _check_json_type(content_type: str | None) -> None:
    media, *params = (content_type or "").split(";")
    charset = next(
        (
            value.strip().strip('"').lower()
            for name, _, value in (p.partition("=") for p in params)
            if name.strip().lower() == "charset"
        ),
        "utf-8",
    )
    if media.strip().lower() not in JSON_TYPES or charset != "utf-8":
        raise RequestRejected(
            415,
            "Unsupported media type",
            "Send JSON encoded as UTF-8 with Content-Type: application/json.",
        )


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRejected(400, "Invalid request", "The client went away.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _check_json_text(body: bytes, max_depth: int, max_containers: int | None) -> None:
    """UTF-8, nested at most `max_depth` deep, with at most `max_containers` arrays and
    objects. Linear in the body's size."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRejected(400, "Invalid JSON", "The body must be UTF-8 encoded.") from None
    limit = max_depth if max_containers is None else min(max_depth, max_containers)
    if body.count(b"[") + body.count(b"{") <= limit:
        return  # cannot nest deeper than it has brackets: the common, cheap case
    brackets = _brackets_outside_strings(body)
    if max_containers is not None and brackets.count(b"[") > max_containers:
        raise RequestRejected(
            400, "Invalid JSON", f"JSON may hold at most {max_containers} arrays and objects."
        )
    if _nests_deeper(brackets, max_depth):
        raise RequestRejected(
            400, "Invalid JSON", f"JSON may nest at most {max_depth} levels deep."
        )


def _brackets_outside_strings(body: bytes) -> bytes:
    """The brackets and braces of the body that are not inside a string, all as `[` and `]`.

    Exact for JSON (a backslash outside a string, which JSON never has, is read as an
    escape too). Only bytes below 0x80 matter, so the scan reads bytes, not characters.
    A step never ends on a backslash, so each escape is whole in one step."""
    parts: list[bytes] = []
    in_string = False
    start = 0
    while start < len(body):
        end = start + SCAN_STEP_BYTES
        if end < len(body):  # just past the first byte from end - 1 on that is no backslash
            found = _NOT_BACKSLASH.search(body, end - 1)
            end = found.end() if found else len(body)
        # `\\` pairs first, then the `\"` left: the quotes that remain delimit strings.
        step = body[start:end].replace(b"\\\\", b"").replace(b'\\"', b"")
        # Two adjacent quotes enclose nothing; dropping them leaves every bracket inside or
        # outside a string as it was.
        step = step.translate(_FOLD_BRACES, _NOT_STRUCTURE).replace(b'""', b"")
        pieces = step.split(b'"')
        parts.extend(pieces[1 if in_string else 0 :: 2])
        in_string ^= len(pieces) % 2 == 0  # an odd number of quotes
        start = end
    return b"".join(parts)


def _nests_deeper(brackets: bytes, max_depth: int) -> bool:
    """Whether `[`/`]` nest deeper than `max_depth`, or do not balance (so are not JSON).

    Removing every `[]` takes exactly one level off balanced brackets, so at most
    `max_depth` passes (each a C-level replace) tell; a run of more opening brackets
    than that settles it at once."""
    if b"[" * (max_depth + 1) in brackets:
        return True
    for _ in range(max_depth):
        if b"[" not in brackets:
            return False
        reduced = brackets.replace(b"[]", b"")
        if len(reduced) == len(brackets):
            break  # no pair left, yet an opening bracket: unbalanced
        brackets = reduced
    return b"[" in brackets


def install_security(app: FastAPI) -> None:
    """Request guards, security headers and the rate limiter, from the app's settings."""
    settings: Settings = app.state.settings
    limiter_for(app)
    app.add_middleware(RequestGuardMiddleware, settings=settings)
    # Added last, so outermost: the guards' own refusals carry the headers too.
    app.add_middleware(
        SecurityHeadersMiddleware, hsts=settings.public_base_url.startswith("https://")
    )
