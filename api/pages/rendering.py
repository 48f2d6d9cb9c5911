"""Templates, static asset URLs and human error pages for the student pages.

Page routes use `PageRoute`, so any error they raise becomes an HTML page with the right
status instead of the API's JSON body (and never a stack trace).
"""

import hashlib
import logging
from collections.abc import Callable, Coroutine
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import AppError
from api.security_cookies import CSRF_COOKIE

log = logging.getLogger(__name__)

API_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = API_DIR / "templates"
STATIC_DIR = API_DIR / "static"

# Sent with every page; the app-wide middleware adds the Content-Security-Policy.
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Pages that show personal data or carry a secret in their address.
PRIVATE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@cache
def static_version(name: str) -> str:
    """A content hash for cache busting: the URL changes whenever the file does."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    return f"/static/{name}?v={static_version(name)}"


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        # Names and emails come from visitors: escape everything.
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = static_url
    return env


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    private: bool = False,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    settings = request.app.state.settings
    context.setdefault("user", None)
    context.setdefault("page_class", "")
    html = (
        environment()
        .get_template(template)
        .render(
            support_email=settings.support_email,
            csrf_token=request.cookies.get(CSRF_COOKIE, ""),
            **context,
        )
    )
    all_headers = PAGE_HEADERS | (PRIVATE_HEADERS if private else {}) | (headers or {})
    return HTMLResponse(html, status_code=status_code, headers=all_headers)


ERROR_PAGES = {
    400: ("This link doesn't look right", "The address is incomplete or was changed."),
    401: ("Please log in", "You need to log in to see this page."),
    403: ("This request was refused", "Go back to the page you came from and try again."),
    404: ("Page not found", "We couldn't find the page you asked for."),
    405: ("Page not found", "We couldn't find the page you asked for."),
    410: ("This link has expired", "Start again to get a fresh one."),
    502: ("The payment provider didn't answer", "Nothing was charged. Please try again."),
    503: ("We're briefly unavailable", "Please try again in a minute."),
}


def error_page(
    request: Request, status_code: int, heading: str | None = None, message: str | None = None
) -> HTMLResponse:
    default_heading, default_message = ERROR_PAGES.get(
        status_code, ("Something went wrong", "Something went wrong on our side; please retry.")
    )
    return render(
        request,
        "error.html",
        status_code=status_code,
        private=True,
        heading=heading or default_heading,
        message=message or default_message,
        status=status_code,
    )


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    return RedirectResponse(f"/login?next={target}", status_code=303)


class PageRoute(APIRoute):
    """An APIRoute whose errors render as human HTML pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError:
                return error_page(request, 400)
            except AppError as exc:
                return error_page(request, exc.status_code, message=exc.message)
            except StarletteHTTPException as exc:
                if exc.status_code == 401:
                    return login_redirect(request)
                return error_page(request, exc.status_code)
            except Exception:
                log.exception("page error on %s %s", request.method, request.url.path)
                return error_page(request, 500)

        return page_handler
