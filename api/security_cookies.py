"""Cookies that carry secrets: always HttpOnly and SameSite, Secure outside localhost."""

from urllib.parse import urlsplit

from fastapi import Response

from core.security import TokenPair
from core.settings import Settings

ACCESS_COOKIE = "onramp_access"
REFRESH_COOKIE = "onramp_refresh"
CHECKOUT_COOKIE = "onramp_checkout"


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


def set_auth_cookies(response: Response, settings: Settings, tokens: TokenPair) -> None:
    secure = secure_cookies(settings)
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
        max_age=settings.refresh_token_days * 86400,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/api/auth/",
    )


def clear_auth_cookies(response: Response) -> None:
    response.delete_cookie(ACCESS_COOKIE, path="/")
    response.delete_cookie(REFRESH_COOKIE, path="/api/auth/")
