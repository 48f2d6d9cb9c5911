"""Cookies that carry secrets: always HttpOnly and SameSite, Secure outside localhost.

The one readable cookie, `onramp_csrf`, is the double-submit token of a browser login:
pages echo it in an `X-CSRF-Token` header or a `csrf_token` form field.
"""

from urllib.parse import urlsplit

from fastapi import Response

from core.accounts.security import TokenPair, csrf_token, device_token
from core.settings import Settings

ACCESS_COOKIE = "onramp_access"
REFRESH_COOKIE = "onramp_refresh"
CHECKOUT_COOKIE = "onramp_checkout"
CSRF_COOKIE = "onramp_csrf"
DEVICE_COOKIE = "onramp_device"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
REFRESH_COOKIE_PATH = "/api/auth/"


def secure_cookies(settings: Settings) -> bool:
    host = urlsplit(settings.public_base_url).hostname or ""
    return urlsplit(settings.public_base_url).scheme == "https" or host not in (
        "localhost",
        "127.0.0.1",
    )


def set_checkout_cookie(response: Response, settings: Settings, nonce: str) -> None:
    # Lax (not Strict): it must come back on the top-level redirect from Stripe.
    response.set_cookie(
        CHECKOUT_COOKIE,
        nonce,
        max_age=24 * 3600,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(settings),
        path="/",
    )


def clear_checkout_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        CHECKOUT_COOKIE, path="/", httponly=True, samesite="lax", secure=secure_cookies(settings)
    )


def set_auth_cookies(response: Response, settings: Settings, tokens: TokenPair) -> None:
    secure = secure_cookies(settings)
    login_seconds = settings.refresh_token_days * 86400
    response.set_cookie(
        ACCESS_COOKIE,
        tokens.access,
        max_age=tokens.access_expires_in,
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )
    response.set_cookie(
        REFRESH_COOKIE,
        tokens.refresh,
        max_age=login_seconds,
        httponly=True,
        samesite="strict",
        secure=secure,
        path=REFRESH_COOKIE_PATH,
    )
    # Readable by the pages' scripts on purpose: it is useless without the HttpOnly ones.
    # Lax like the access cookie, so a page opened from a link can render it into forms.
    response.set_cookie(
        CSRF_COOKIE,
        csrf_token(settings, tokens.session_id),
        max_age=login_seconds,
        httponly=False,
        samesite="lax",
        secure=secure,
        path="/",
    )


def set_device_cookie(response: Response, settings: Settings, email: str) -> None:
    """Remember this browser as one `email` logged in from (see api.ratelimit.login_limited).
    It outlives logouts on purpose: it grants nothing but being let try a password."""
    response.set_cookie(
        DEVICE_COOKIE,
        device_token(settings, email),
        max_age=settings.login_device_days * 86400,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(settings),
        path="/",
    )


def clear_auth_cookies(response: Response, settings: Settings) -> None:
    secure = secure_cookies(settings)
    response.delete_cookie(ACCESS_COOKIE, path="/", httponly=True, samesite="lax", secure=secure)
    response.delete_cookie(
        REFRESH_COOKIE, path=REFRESH_COOKIE_PATH, httponly=True, samesite="strict", secure=secure
    )
    response.delete_cookie(CSRF_COOKIE, path="/", samesite="lax", secure=secure)
