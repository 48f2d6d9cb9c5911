"""Routes of the student pages, the credentials endpoint they call, and the HTML 404.

Pages render on the server and call the same public JSON API any client would use; the
get-started form also works without JavaScript through `POST /get-started`.
"""

import logging
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.convertors import Convertor, register_url_convertor
from temporalio.client import Client

from api.auth.deps import CsrfProtected, CurrentUser, OptionalUser
from api.auth.schemas import ForgotPasswordRequest, LoginRequest, SetPasswordRequest
from api.deps import SessionDep, SettingsDep, StripeDep, TemporalDep
from api.errors import AppError
from api.forms import form_fields
from api.openapi import error_responses
from api.pages import service
from api.pages.rendering import PageRoute, error_page, login_redirect, render
from api.pages.schemas import ToolCredentials
from api.payments import checkout, verify
from api.ratelimit import login_limited, rate_limit
from api.security_cookies import (
    ACCESS_COOKIE,
    clear_auth_cookies,
    set_auth_cookies,
    set_checkout_cookie,
    set_device_cookie,
)
from core.accounts import service as auth
from core.cohorts import service as cohorts
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.tracks import TRACKS
from core.urls import origin_of

log = logging.getLogger(__name__)

pages = APIRouter(route_class=PageRoute, include_in_schema=False)
student_api = APIRouter(prefix="/api/student", tags=["student"])

router = APIRouter()  # what api.main includes: the pages and their JSON endpoint


# ---- public pages --------------------------------------------------------------------


@pages.get("/")
async def landing(request: Request, user: OptionalUser) -> Response:
    return render(request, "landing.html", user=user, tracks=service.track_cards())


async def _cohort_cards(request: Request) -> dict[str, service.CohortCard]:
    return await run_in_threadpool(service.cohort_cards, request.app.state.engine)


@pages.get("/get-started")
async def get_started(
    request: Request,
    user: OptionalUser,
    track: Annotated[str, Query(max_length=10)] = "",
    offer: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    form = service.CheckoutForm(track=track if track in TRACKS else "")
    found = None
    if offer:
        # A waitlist offer's personal link: the person, the track and the held seat.
        found = await run_in_threadpool(service.offer_view, request.app.state.engine, offer)
        if found is not None and found.valid:
            form = service.CheckoutForm(
                email=found.email, name=found.name, track=found.track, offer=found.token
            )
    return render(
        request,
        "get_started.html",
        user=user,
        form=form,
        tracks=service.track_cards(),
        cohorts=await _cohort_cards(request),
        offer=found,
        offer_unknown=bool(offer) and found is None,
    )


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
    db: SessionDep,
    settings: SettingsDep,
    gateway: StripeDep,
) -> Response:
    if _cross_site(request, settings):
        return error_page(request, 403)
    fields = await form_fields(request)
    tracks = service.track_cards()
    if fields.get("waitlist") in TRACKS:
        return await _join_waitlist_form(request, settings, fields, tracks)
    form, body = service.parse_checkout_form(fields)
    cards = await _cohort_cards(request)
    if body is None:
        # Details fine, no track yet: the no-JavaScript "Continue" lands on step 2.
        status = 200 if not form.errors else 400
        return render(
            request, "get_started.html", status_code=status, form=form, tracks=tracks,
            cohorts=cards,
        )  # fmt: skip
    try:
        await rate_limit(request, "checkout", email=body.email)
        session, nonce = await run_in_threadpool(
            checkout.create_checkout, db, gateway, settings, body
        )
    except AppError as exc:
        form.errors["form"] = exc.message
        return render(
            request,
            "get_started.html",
            status_code=exc.status_code,
            form=form,
            tracks=tracks,
            cohorts=cards,
        )
    response = RedirectResponse(session["url"], status_code=303)
    set_checkout_cookie(response, settings, nonce)
    return response


async def _join_waitlist_form(
    request: Request, settings: Settings, fields: dict[str, str], tracks: list[Any]
) -> Response:
    """The no-JavaScript "Join the waitlist": the same use case as POST /api/payments/waitlist/."""
    track = fields["waitlist"]
    form, _ = service.parse_checkout_form({**fields, "track": track})
    status_message, status_code = "", 400 if form.errors else 200
    if not form.errors:
        try:
            await rate_limit(request, "checkout", email=form.email)
            joined = await run_in_threadpool(
                partial(
                    cohorts.join_waitlist, request.app.state.engine, settings, track=track,
                    code=None, email=form.email, name=form.name,
                )
            )  # fmt: skip
            status_message = service.waitlist_message(joined)
        except AppError as exc:
            form.errors["form"] = exc.message
            status_code = exc.status_code
    return render(
        request,
        "get_started.html",
        status_code=status_code,
        form=form,
        tracks=tracks,
        cohorts=await _cohort_cards(request),
        status_message=status_message,
    )


@pages.get("/payment/success")
async def payment_success(
    request: Request,
    user: OptionalUser,
    session_id: Annotated[str, Query(max_length=300)] = "",
) -> Response:
    # success.js reads the id from the address bar, then removes it (a reload finds it in
    # history.state, so an empty one is fine); it is never echoed into the page.
    if session_id and not checkout.SESSION_ID.match(session_id):
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
# Each form posts JSON to /api/auth/ through account.js; these POST routes are the same
# actions for browsers without JavaScript, through the same auth service functions.


@pages.get("/login")
async def login(
    request: Request,
    user: OptionalUser,
    next: Annotated[str, Query(max_length=500)] = "",  # noqa: A002 (the usual name)
) -> Response:
    target = service.safe_next(next)
    if user is not None:
        return RedirectResponse(target, status_code=303)
    return render(request, "login.html", private=True, next_url=target, email="", error="")


@pages.post("/login")
async def login_submit(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    # Login CSRF: refuse another site's post (it would log the visitor into its account).
    if _cross_site(request, settings):
        return error_page(request, 403)
    data = await form_fields(request)
    target = service.safe_next(data.get("next"))
    email = data.get("email", "").strip()[:320]

    def again(status_code: int, error: str) -> Response:
        return render(
            request,
            "login.html",
            status_code=status_code,
            private=True,
            next_url=target,
            email=email,
            error=error,
        )

    try:
        body = LoginRequest(email=email, password=data.get("password", ""))
    except ValidationError:
        return again(400, "Enter your email and your password.")
    try:
        async with login_limited(request, body.email, auth.InvalidCredentials):
            user, tokens = await run_in_threadpool(
                auth.login, db, settings, body.email, body.password
            )
    except auth.InvalidCredentials:
        return again(401, "That email and password don't match. Try again, or reset your password.")
    except AppError as exc:
        return again(exc.status_code, exc.message)
    response = RedirectResponse(target, status_code=303)
    set_auth_cookies(response, settings, tokens)
    set_device_cookie(response, settings, user.email)
    return response


@pages.post("/logout")
async def logout_submit(
    request: Request, db: SessionDep, settings: SettingsDep, _csrf: CsrfProtected
) -> Response:
    # The refresh cookie is scoped to /api/auth/: ending the access token's login is enough.
    await run_in_threadpool(auth.logout, db, settings, None, request.cookies.get(ACCESS_COOKIE))
    response = RedirectResponse("/", status_code=303)
    clear_auth_cookies(response, settings)
    return response


@pages.get("/forgot-password")
async def forgot_password(request: Request, user: OptionalUser) -> Response:
    return render(request, "forgot_password.html", user=user, email="", error="", done=False)


@pages.post("/forgot-password")
async def forgot_password_submit(
    request: Request, settings: SettingsDep, background: BackgroundTasks
) -> Response:
    if _cross_site(request, settings):
        return error_page(request, 403)
    email = (await form_fields(request)).get("email", "").strip()[:320]
    try:
        body = ForgotPasswordRequest(email=email)
        await rate_limit(request, "forgot_password", email=body.email)
    except ValidationError:
        return render(
            request,
            "forgot_password.html",
            status_code=400,
            email=email,
            error="Enter a valid email address, like name@example.com.",
            done=False,
        )
    except AppError as exc:
        return render(
            request,
            "forgot_password.html",
            status_code=exc.status_code,
            email=email,
            error=exc.message,
            done=False,
        )
    background.add_task(auth.send_reset_link, request.app.state.engine, settings, body.email)
    return render(request, "forgot_password.html", email="", error="", done=True)


@pages.get("/set-password")
async def set_password(
    request: Request,
    user: OptionalUser,
    token: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    # The token stays out of links and logs: no-referrer, account.js removes it from the
    # address bar, and the form posts it in the body.
    return render(request, "set_password.html", private=True, user=user, token=token, error="")


@pages.post("/set-password")
async def set_password_submit(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    if _cross_site(request, settings):
        return error_page(request, 403)
    data = await form_fields(request)
    token = data.get("token", "")[:200]

    def again(status_code: int, error: str) -> Response:
        return render(
            request,
            "set_password.html",
            status_code=status_code,
            private=True,
            token=token,
            error=error,
        )

    password = data.get("password", "")
    if password != data.get("password2", ""):
        return again(400, "The two passwords don't match.")
    try:
        body = SetPasswordRequest(token=token, password=password)
    except ValidationError:
        return again(400, "Enter a password, and use the link from your email.")
    try:
        await rate_limit(request, "set_password")
        user, tokens = await run_in_threadpool(
            auth.set_password, db, settings, body.token, body.password
        )
    except AppError as exc:
        return again(exc.status_code, exc.message)
    response = RedirectResponse("/student/dashboard", status_code=303)
    set_auth_cookies(response, settings, tokens)
    set_device_cookie(response, settings, user.email)  # the link proved the email
    return response


# ---- the student's dashboard ---------------------------------------------------------


async def _progress(
    session_id: str, settings: Settings, gateway: StripeGateway, client: Client, engine: Any
) -> dict[str, Any] | None:
    try:
        verification = await verify.read_enrollment(client, gateway, settings, engine, session_id)
    except Exception as err:  # noqa: BLE001 (progress is a nicety: the page still renders)
        log.warning("dashboard could not read enrollment progress: %s", type(err).__name__)
        return None
    return verification.state.progress("student")


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
                track.checkout_session_id, settings, gateway, client, request.app.state.engine
            )
        for tool in track.tools:
            # Without JavaScript, "Show credentials" is a GET back here with ?reveal=tool.
            if tool.tool == reveal and tool.has_credentials:
                tool.credentials = await run_in_threadpool(
                    service.tool_credentials, db, settings, user, tool.tool
                )
    return render(request, "dashboard.html", private=True, user=user, view=view)


@student_api.get(
    "/tools/{tool}/credentials",
    response_model=ToolCredentials,
    responses=error_responses(401, 404, 409, 503),
)
def tool_credentials(
    tool: str, user: CurrentUser, db: SessionDep, settings: SettingsDep
) -> JSONResponse:
    """The student's login for one ready tool; never cached, never logged."""
    body = service.tool_credentials(db, settings, user, tool)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


router.include_router(pages)
router.include_router(student_api)
PAGE_PATHS = frozenset(route.path for route in pages.routes if isinstance(route, PageRoute))


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
    # This route matched before Starlette could redirect `/page/` to `/page`: do it here.
    bare = "/" + path.rstrip("/")
    if path.endswith("/") and request.method in ("GET", "HEAD") and bare in PAGE_PATHS:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(bare + query, status_code=308)
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": "Not Found", "message": "Not Found"}, status_code=404)
    return error_page(request, 404)
