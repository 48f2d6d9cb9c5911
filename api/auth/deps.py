"""Who is calling: a user from a Bearer access token or the browser's cookies.

A request is authenticated by `Authorization: Bearer <access>` or, failing that header,
by the HttpOnly `onramp_access` cookie. Cookie-authenticated requests that change state
(any method but GET/HEAD/OPTIONS) must also prove they come from our own pages: the
readable `onramp_csrf` cookie echoed in an `X-CSRF-Token` header or a `csrf_token` form
field, matching the login it belongs to. Bearer requests are exempt (a browser never
attaches that header on its own). Without that proof, `CurrentUser` answers 403 and
`OptionalUser` is None: the request is served as a visitor's, never acted on for the user.
"""

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SessionDep, SettingsDep
from api.errors import AppError
from api.forms import form_fields
from api.security_cookies import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    CSRF_FORM_FIELD,
    CSRF_HEADER,
    REFRESH_COOKIE,
)
from core.accounts.security import TokenError, csrf_matches, decode, session_active, session_id_of
from core.errors import NotAuthenticated
from core.models import Role, User
from core.settings import Settings
from core.urls import origin_of

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Publishes the login the API takes; `authenticate` reads the header (or cookie) itself.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="AccessToken",
    description="The `access` token from /api/auth/login. Browsers send the HttpOnly "
    f"`{ACCESS_COOKIE}` cookie instead, and `{CSRF_HEADER}` on every change.",
)


class Forbidden(AppError):
    status_code = 403
    error = "Forbidden"


class CsrfFailed(Forbidden):
    error = "CSRF check failed"


@dataclass
class Authenticated:
    user: User
    session_id: str
    via_cookie: bool


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NotAuthenticated("Send an access token as `Authorization: Bearer <token>`.")
    return value.strip()


def authenticate(request: Request, db: SessionDep, settings: SettingsDep) -> Authenticated | None:
    """None without credentials; NotAuthenticated for credentials that are not good."""
    token = _bearer(request)
    via_cookie = token is None
    if token is None:
        token = request.cookies.get(ACCESS_COOKIE)
        if not token:
            return None
    try:
        claims = decode(settings, token, "access")
    except TokenError:
        raise NotAuthenticated("Your session has expired; log in again.") from None
    user = db.get(User, int(claims["sub"]))
    if user is None or not user.is_active or not session_active(db, claims["sid"]):
        raise NotAuthenticated("Your session has ended; log in again.")
    return Authenticated(user, claims["sid"], via_cookie)


def token_user_id(request: Request, settings: Settings) -> int | None:
    """The user an access token (header or cookie) names, from its signature alone: no
    database read, for pages that only decide what to show. None without a good token."""
    try:
        token = _bearer(request) or request.cookies.get(ACCESS_COOKIE)
    except NotAuthenticated:
        return None
    if not token:
        return None
    try:
        return int(decode(settings, token, "access")["sub"])
    except (TokenError, KeyError, ValueError):
        return None


def _authenticate_optional(
    request: Request, db: SessionDep, settings: SettingsDep
) -> Authenticated | None:
    try:
        return authenticate(request, db, settings)
    except NotAuthenticated:
        return None


async def _submitted_csrf(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    if request.headers.get("content-type", "").lower().startswith(FORM_TYPES):
        # Parsed once per request: the endpoint reads the same fields.
        return (await form_fields(request)).get(CSRF_FORM_FIELD)
    return None


def _cookie_session_id(request: Request, settings: Settings) -> str | None:
    """The login a cookie-authenticated request speaks for, if its cookies still verify."""
    return session_id_of(settings, request.cookies.get(ACCESS_COOKIE), "access") or session_id_of(
        settings, request.cookies.get(REFRESH_COOKIE), "refresh"
    )


async def check_csrf(request: Request, settings: Settings, session_id: str | None) -> None:
    """Double-submit check, bound to the login when it is known. CsrfFailed otherwise."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise CsrfFailed("Cross-site requests are not accepted.")
    origin = request.headers.get("origin")
    if origin and origin_of(origin) not in settings.redirect_origins:
        raise CsrfFailed("Requests from this origin are not accepted.")
    submitted = await _submitted_csrf(request)
    cookie = request.cookies.get(CSRF_COOKIE)
    if not submitted or not cookie or not hmac.compare_digest(submitted, cookie):
        raise CsrfFailed(
            f"Send the {CSRF_COOKIE} cookie's value in the {CSRF_HEADER} header "
            f"or the {CSRF_FORM_FIELD} form field."
        )
    if session_id is not None and not csrf_matches(settings, session_id, submitted):
        raise CsrfFailed("The CSRF token belongs to another session; reload the page.")


def uses_auth_cookies(request: Request) -> bool:
    """Credentials that a browser attaches by itself: only these need a CSRF proof."""
    if request.headers.get("authorization") is not None:
        return False
    return bool(request.cookies.get(ACCESS_COOKIE) or request.cookies.get(REFRESH_COOKIE))


async def require_csrf(request: Request, settings: SettingsDep) -> None:
    """For state-changing endpoints that read the session cookies themselves."""
    if uses_auth_cookies(request):
        await check_csrf(request, settings, _cookie_session_id(request, settings))


async def current_user(
    request: Request,
    settings: SettingsDep,
    auth: Annotated[Authenticated | None, Depends(authenticate)],
    _published: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> User:
    if auth is None:
        raise NotAuthenticated()
    if auth.via_cookie:
        await check_csrf(request, settings, auth.session_id)
    return auth.user


async def optional_user(
    request: Request,
    settings: SettingsDep,
    auth: Annotated[Authenticated | None, Depends(_authenticate_optional)],
) -> User | None:
    if auth is None:
        return None
    if auth.via_cookie:
        try:
            await check_csrf(request, settings, auth.session_id)
        except CsrfFailed:
            # Not the user's own page: serve it as to a visitor, never act for the user.
            return None
    return auth.user


async def staff_user(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != Role.STAFF:
        raise Forbidden("This is for Onramp staff only.")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]
StaffUser = Annotated[User, Depends(staff_user)]
CsrfProtected = Annotated[None, Depends(require_csrf)]
