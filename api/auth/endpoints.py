"""HTTP routes of the accounts API: JSON in, JSON out, tokens also as HttpOnly cookies."""

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.auth.deps import (
    CsrfProtected,
    CurrentUser,
    NotAuthenticated,
    check_csrf,
)
from api.auth.schemas import (
    Accepted,
    AccountPublic,
    ForgotPasswordRequest,
    LoggedOut,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    SetPasswordRequest,
    TokenResponse,
)
from api.deps import SessionDep, SettingsDep
from api.openapi import GUARDED, error_responses
from api.ratelimit import login_limited, rate_limit
from api.security_cookies import (
    ACCESS_COOKIE,
    REFRESH_COOKIE,
    clear_auth_cookies,
    set_auth_cookies,
    set_device_cookie,
)
from core.accounts import service
from core.accounts.security import TokenPair, session_id_of
from core.models import User
from core.settings import Settings

router = APIRouter(prefix="/api/auth", tags=["auth"])


def account(user: User) -> AccountPublic:
    assert user.id is not None
    return AccountPublic(
        id=user.id,
        email=user.email,
        name=user.name,
        role=user.role,
        track=user.track,
        enrollment_status=user.enrollment_status,
        username=user.username,
    )


def _tokens_response(settings: Settings, user: User, tokens: TokenPair) -> JSONResponse:
    body = TokenResponse(
        access=tokens.access,
        refresh=tokens.refresh,
        expires_in=tokens.access_expires_in,
        user=account(user),
    )
    response = JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
    set_auth_cookies(response, settings, tokens)
    return response


@router.post(
    "/login", response_model=TokenResponse, responses=error_responses(*GUARDED, 401, 429, 503)
)
async def login(
    body: LoginRequest, request: Request, db: SessionDep, settings: SettingsDep
) -> JSONResponse:
    async with login_limited(request, body.email, service.InvalidCredentials):
        user, tokens = await run_in_threadpool(
            service.login, db, settings, body.email, body.password
        )
    response = _tokens_response(settings, user, tokens)
    set_device_cookie(response, settings, user.email)
    return response


@router.post(
    "/refresh", response_model=TokenResponse, responses=error_responses(*GUARDED, 401, 403, 503)
)
async def refresh(
    request: Request, db: SessionDep, settings: SettingsDep, body: RefreshRequest | None = None
) -> JSONResponse:
    """Spend a refresh token (the body's, else the cookie's) for a new pair."""
    token = body.refresh if body is not None else None
    if not token:
        token = request.cookies.get(REFRESH_COOKIE)
        if not token:
            raise NotAuthenticated("No refresh token: log in again.")
        await check_csrf(request, settings, session_id_of(settings, token, "refresh"))
    try:
        user, tokens = await run_in_threadpool(service.refresh, db, settings, token)
    except service.SessionReused:
        await run_in_threadpool(db.commit)  # the revocation must outlive this refused request
        raise
    return _tokens_response(settings, user, tokens)


@router.post("/logout", response_model=LoggedOut, responses=error_responses(*GUARDED, 403, 503))
async def logout(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    _csrf: CsrfProtected,
    body: LogoutRequest | None = None,
) -> JSONResponse:
    """End this login everywhere (its refresh family and access tokens); clear cookies."""
    refresh_token = (body.refresh if body is not None else None) or request.cookies.get(
        REFRESH_COOKIE
    )
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    access = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(ACCESS_COOKIE)
    await run_in_threadpool(service.logout, db, settings, refresh_token, access)
    response = JSONResponse(LoggedOut().model_dump())
    clear_auth_cookies(response, settings)
    return response


@router.get("/me", response_model=AccountPublic, responses=error_responses(401, 503))
async def me(user: CurrentUser) -> AccountPublic:
    return account(user)


@router.post(
    "/set-password", response_model=TokenResponse, responses=error_responses(*GUARDED, 429, 503)
)
async def set_password(
    body: SetPasswordRequest, request: Request, db: SessionDep, settings: SettingsDep
) -> JSONResponse:
    """Spend the link from the welcome or reset email; answers like a login.

    400 `Invalid link` for a link that is unknown, spent or expired, then 400 `Weak
    password` for a password shorter than 10 characters, repetitive, common or the email."""
    await rate_limit(request, "set_password")
    user, tokens = await run_in_threadpool(
        service.set_password, db, settings, body.token, body.password
    )
    response = _tokens_response(settings, user, tokens)
    set_device_cookie(response, settings, user.email)  # the link proved the email
    return response


@router.post(
    "/forgot-password",
    status_code=202,
    response_model=Accepted,
    responses=error_responses(*GUARDED, 429),
)
async def forgot_password(
    body: ForgotPasswordRequest,
    request: Request,
    settings: SettingsDep,
    background: BackgroundTasks,
) -> Accepted:
    """The same answer whether or not the email has an account; the email goes out after."""
    await rate_limit(request, "forgot_password", email=body.email)
    background.add_task(service.send_reset_link, request.app.state.engine, settings, body.email)
    return Accepted(
        message="If an account uses this email, a link to choose a new password is on its way."
    )
