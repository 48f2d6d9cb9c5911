"""Routes of the student pages, the credentials endpoint they call, and the HTML 404.

Pages render on the server and call the same public JSON API any client would use; the
get-started form also works without JavaScript through `POST /get-started`.
"""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.convertors import Convertor, register_url_convertor

from api.auth.deps import CurrentUser, OptionalUser
from api.deps import SessionDep, SettingsDep, StripeDep, TemporalDep
from api.errors import AppError
from api.pages import service
from api.pages.rendering import PageRoute, error_page, login_redirect, render
from api.payments import service as payments
from api.security_cookies import set_checkout_cookie
from core.settings import Settings
from core.urls import origin_of

log = logging.getLogger(__name__)

pages = APIRouter(route_class=PageRoute, include_in_schema=False)
student_api = APIRouter(prefix="/api/student", tags=["student"])

router = APIRouter()  # what api.main includes: the pages and their JSON endpoint


# ---- public pages --------------------------------------------------------------------


@pages.get("/")
async def landing(request: Request, user: OptionalUser) -> Response:
    return render(request, "landing.html", user=user, tracks=service.track_cards())


@pages.get("/get-started")
async def get_started(
    request: Request,
    user: OptionalUser,
    track: Annotated[str, Query(max_length=10)] = "",
) -> Response:
    form = service.CheckoutForm(track=track if track in {"DP", "FSD"} else "")
    return render(request, "get_started.html", user=user, form=form, tracks=service.track_cards())


def _cross_site(request: Request, settings: Settings) -> bool:
    """A form post from another site (CSRF). Browsers say so; other clients are not a risk."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return bool(origin) and origin_of(origin or "") not in settings.redirect_origins


@pages.post("/get-started")
async def get_started_submit(
    request: Request,
    user: OptionalUser,
    db: SessionDep,
    settings: SettingsDep,
    gateway: StripeDep,
) -> Response:
    if _cross_site(request, settings):
        return error_page(request, 403)
    data = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    form, body = service.parse_checkout_form(data)
    tracks = service.track_cards()
    if body is None:
        return render(
            request, "get_started.html", status_code=400, user=user, form=form, tracks=tracks
        )
    try:
        session, nonce = await run_in_threadpool(
            payments.create_checkout, db, gateway, settings, body
        )
    except AppError as exc:
        form.errors["form"] = exc.message
        return render(
            request,
            "get_started.html",
            status_code=exc.status_code,
            user=user,
            form=form,
            tracks=tracks,
        )
    response = RedirectResponse(session["url"], status_code=303)
    set_checkout_cookie(response, settings, nonce)
    return response


@pages.get("/payment/success")
async def payment_success(
    request: Request,
    user: OptionalUser,
    session_id: Annotated[str, Query(max_length=300)] = "",
) -> Response:
    # The id is read by success.js from the address bar, then removed; never echoed here.
    if not payments.SESSION_ID.match(session_id):
        return error_page(
            request,
            400,
            heading="We couldn't read your payment link",
            message="The address is missing its checkout reference. If you paid, your "
            "welcome email has everything you need; otherwise start again.",
        )
    return render(request, "success.html", private=True, user=user)


@pages.get("/payment/cancel")
async def payment_cancel(request: Request, user: OptionalUser) -> Response:
    return render(request, "cancel.html", user=user)


# ---- accounts ------------------------------------------------------------------------


@pages.get("/login")
async def login(
    request: Request,
    user: OptionalUser,
    next: Annotated[str, Query(max_length=500)] = "",  # noqa: A002 (the usual name)
) -> Response:
    target = service.safe_next(next)
    if user is not None:
        return RedirectResponse(target, status_code=303)
    return render(request, "login.html", private=True, next_url=target)


@pages.get("/forgot-password")
async def forgot_password(request: Request, user: OptionalUser) -> Response:
    return render(request, "forgot_password.html", user=user)


@pages.get("/set-password")
async def set_password(
    request: Request,
    user: OptionalUser,
    token: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    # The token stays out of links and logs: no-referrer, and set-password.js removes it
    # from the address bar; the form posts it in the body.
    return render(request, "set_password.html", private=True, user=user, token=token)


# ---- the student's dashboard ---------------------------------------------------------


async def _progress(
    request: Request, session_id: str, settings: Settings, gateway: Any, client: Any
) -> dict[str, Any] | None:
    try:
        verification = await payments.read_enrollment(client, gateway, settings, session_id)
    except Exception as err:  # noqa: BLE001 (progress is a nicety: the page still renders)
        log.warning("dashboard could not read enrollment progress: %s", type(err).__name__)
        return None
    return verification.state.progress()


@pages.get("/student/dashboard")
async def dashboard(
    request: Request,
    user: OptionalUser,
    db: SessionDep,
    settings: SettingsDep,
    gateway: StripeDep,
    client: TemporalDep,
    reveal: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    view = await run_in_threadpool(service.build_dashboard, db, user)
    for track in view.tracks:
        if track.in_progress:
            track.progress = await _progress(
                request, track.checkout_session_id, settings, gateway, client
            )
        for tool in track.tools:
            # Without JavaScript, "Show credentials" is a GET back here with ?reveal=tool.
            if tool.tool == reveal and tool.has_credentials:
                tool.credentials = await run_in_threadpool(
                    service.tool_credentials, db, settings, user, tool.tool
                )
    return render(request, "dashboard.html", private=True, user=user, view=view)


@student_api.get("/tools/{tool}/credentials")
def tool_credentials(
    tool: str, user: CurrentUser, db: SessionDep, settings: SettingsDep
) -> JSONResponse:
    """The student's login for one ready tool; never cached, never logged."""
    body = service.tool_credentials(db, settings, user, tool)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


router.include_router(pages)
router.include_router(student_api)


# ---- human 404 for unknown pages -----------------------------------------------------


class PagePathConvertor(Convertor[str]):
    """Any path except the API's, static files and the API docs (those keep JSON 404s)."""

    regex = r"(?!api/|api$|static/|docs|redoc|openapi\.json).*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("page_path", PagePathConvertor())

# Included last by api.main: it matches every path no other route claimed.
not_found_router = APIRouter(route_class=PageRoute, include_in_schema=False)


@not_found_router.api_route(
    "/{path:page_path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
)
async def page_not_found(request: Request, path: str) -> Response:
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": "Not Found", "message": "Not Found"}, status_code=404)
    return error_page(request, 404)
