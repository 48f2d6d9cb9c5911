"""JWT access and refresh tokens (pyjwt), password hashing (Argon2) and CSRF tokens.

Access tokens are short-lived and carry their login's id (`sid`, the refresh family), so
ending a login (logout, refresh-token reuse, a new password) ends its access tokens too.
Refresh tokens are single-use: each is stored hashed, rotating one marks it used, and
presenting a used one again revokes its whole family (a stolen token replayed after the
owner refreshed). Every token names its signing key (`kid`) so keys can rotate: the
current key signs, old keys listed in JWT_PREVIOUS_KEYS still verify.
"""

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import jwt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, select

from core.crypto import token_hash
from core.models import RefreshToken, User, utcnow
from core.settings import Settings, parse_previous_keys

ALGORITHM = "HS256"
ISSUER = "onramp"
AUDIENCE = "onramp-api"
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
MAX_TOKEN_LENGTH = 4096  # far above any token we issue; bounds the work on garbage
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti", "typ", "sid"]
# Passwords people pick first; refused outright (the length rule already stops most).
COMMON_PASSWORDS = frozenset(
    {
        "password12",
        "password123",
        "password1234",
        "1234567890",
        "0123456789",
        "qwertyuiop",
        "1q2w3e4r5t",
        "iloveyou12",
        "letmein123",
        "welcome123",
        "onramp1234",
        "changeme123",
    }
)

_hasher = PasswordHasher()


class TokenError(Exception):
    """Any token that must not be accepted; the message is safe to show."""


class RefreshReuse(TokenError):
    """A rotated refresh token came back: its family was revoked, and that must persist."""


@dataclass
class TokenPair:
    access: str
    refresh: str
    access_expires_in: int
    session_id: str  # the refresh family; CSRF tokens are bound to it


# ---- passwords -----------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account has a password: no timing oracle."""
    if not password_hash:
        _verify_quietly(_dummy_hash(), password)
        return False
    return _verify_quietly(password_hash, password)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def _verify_quietly(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def password_problem(password: str, email: str = "") -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Use at most {MAX_PASSWORD_LENGTH} characters."
    lowered = password.lower()
    if email and (lowered == email.lower() or lowered == email.split("@", 1)[0].lower()):
        return "Do not use your email address as your password."
    if len(set(password)) < 4:
        return "Use a less repetitive password."
    if lowered in COMMON_PASSWORDS:
        return "This password is too common; choose another."
    return None


# ---- signing keys --------------------------------------------------------------------


def verification_keys(settings: Settings) -> dict[str, str]:
    """kid -> secret: the current key and every old key still accepted."""
    return {settings.jwt_key_id: settings.jwt_secret, **_previous_keys(settings.jwt_previous_keys)}


@lru_cache(maxsize=8)
def _previous_keys(spec: str) -> dict[str, str]:
    return parse_previous_keys(spec)


def _encode(settings: Settings, claims: dict[str, Any]) -> str:
    return jwt.encode(
        claims, settings.jwt_secret, algorithm=ALGORITHM, headers={"kid": settings.jwt_key_id}
    )


def decode(settings: Settings, token: str, token_type: str) -> dict[str, Any]:
    """The verified claims of a token of `token_type`, or TokenError."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("invalid or expired token")
    try:
        header = jwt.get_unverified_header(token)
        key = verification_keys(settings).get(str(header.get("kid")))
        if key is None or header.get("alg") != ALGORITHM:
            raise TokenError("invalid or expired token")
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # pinned: "none" and other algorithms are refused
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": REQUIRED_CLAIMS, "strict_aud": True},
        )
    except jwt.PyJWTError as err:
        raise TokenError("invalid or expired token") from err
    if claims.get("typ") != token_type:
        raise TokenError("wrong token type")
    if not str(claims["sub"]).isdigit():
        raise TokenError("invalid or expired token")
    return claims


def session_id_of(settings: Settings, token: str | None, token_type: str) -> str | None:
    """The login (refresh family) a token belongs to, if it verifies."""
    if not token:
        return None
    try:
        return str(decode(settings, token, token_type)["sid"])
    except TokenError:
        return None


# ---- issuing, rotating, revoking -----------------------------------------------------


def issue_tokens(
    session: Session, settings: Settings, user: User, family: str | None = None
) -> TokenPair:
    """A new access/refresh pair; a new login (family) unless one is being rotated."""
    assert user.id is not None
    now = utcnow()
    family = family or secrets.token_hex(16)
    access_ttl = timedelta(minutes=settings.access_token_minutes)
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(user.id), "iat": now, "sid": family}
    access = _encode(
        settings,
        {
            **base,
            "exp": now + access_ttl,
            "jti": secrets.token_hex(16),
            "typ": "access",
            "role": user.role,
        },
    )
    jti = secrets.token_hex(16)
    expires = now + timedelta(days=settings.refresh_token_days)
    refresh = _encode(settings, {**base, "exp": expires, "jti": jti, "typ": "refresh"})
    session.add(
        RefreshToken(
            user_id=user.id,
            jti=jti,
            token_hash=token_hash(refresh),
            family=family,
            expires_at=expires,
        )
    )
    return TokenPair(access, refresh, int(access_ttl.total_seconds()), family)


def rotate_refresh(session: Session, settings: Settings, refresh: str) -> tuple[User, TokenPair]:
    """Spend a refresh token for a new pair. RefreshReuse: the caller must commit."""
    claims = decode(settings, refresh, "refresh")
    row = session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh))
    ).first()
    if row is None or row.jti != claims["jti"] or str(row.user_id) != claims["sub"]:
        raise TokenError("unknown refresh token")
    if row.revoked_at is not None:
        raise TokenError("refresh token revoked")
    if row.used_at is not None:
        revoke_family(session, row.family)
        raise RefreshReuse("refresh token reused; all sessions of this login were ended")
    if row.expires_at <= utcnow():
        raise TokenError("invalid or expired token")
    # Single use even under a race: only one concurrent rotation can flip used_at.
    claimed = session.execute(
        sa.update(RefreshToken)
        .where(col(RefreshToken.id) == row.id)
        .where(col(RefreshToken.used_at).is_(None))
        .where(col(RefreshToken.revoked_at).is_(None))
        .values(used_at=utcnow())
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        revoke_family(session, row.family)
        raise RefreshReuse("refresh token reused; all sessions of this login were ended")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise TokenError("account disabled")
    return user, issue_tokens(session, settings, user, family=row.family)


def session_active(session: Session, family: str) -> bool:
    """A login is live while any of its refresh tokens is unrevoked."""
    return (
        session.exec(
            select(RefreshToken.id)
            .where(RefreshToken.family == family)
            .where(col(RefreshToken.revoked_at).is_(None))
            .limit(1)
        ).first()
        is not None
    )


def revoke_family(session: Session, family: str) -> None:
    session.execute(
        sa.update(RefreshToken)
        .where(col(RefreshToken.family) == family)
        .where(col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


def revoke_user_sessions(session: Session, user_id: int) -> None:
    """End every login of a user (a new password, a disabled account)."""
    session.execute(
        sa.update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id)
        .where(col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


def revoke_refresh(session: Session, settings: Settings, refresh: str) -> None:
    """Log out the family of a refresh token; anything unverifiable is ignored."""
    family = session_id_of(settings, refresh, "refresh")
    if family is not None:
        revoke_family(session, family)


# ---- CSRF (double-submit, bound to the login) ----------------------------------------


def csrf_token(settings: Settings, session_id: str) -> str:
    """An HMAC of the login id: a cookie planted by another site cannot match it."""
    return _csrf_digest(settings.jwt_secret, session_id)


def _csrf_digest(secret: str, session_id: str) -> str:
    digest = hmac.new(secret.encode(), f"csrf:{session_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def csrf_matches(settings: Settings, session_id: str, submitted: str) -> bool:
    # Any verification key: a login that outlives a key rotation keeps its CSRF token.
    return any(
        hmac.compare_digest(_csrf_digest(secret, session_id), submitted)
        for secret in verification_keys(settings).values()
    )


# ---- device cookies (a browser that logged in to an account before) -------------------
# Signed, not stored: "issued-at.HMAC(email, issued-at)". It names no one in the clear and
# lets its browser keep trying a password while guessing from elsewhere locks the email.


def device_token(settings: Settings, email: str) -> str:
    issued = int(utcnow().timestamp())
    return f"{issued}.{_device_digest(settings.jwt_secret, email, issued)}"


def device_token_valid(settings: Settings, token: str | None, email: str) -> bool:
    issued_text, _, digest = (token or "")[:200].partition(".")
    if not issued_text.isdigit():
        return False
    issued = int(issued_text)
    age = utcnow().timestamp() - issued
    if not -300 <= age <= settings.login_device_days * 86400:
        return False
    return any(
        hmac.compare_digest(_device_digest(secret, email, issued), digest)
        for secret in verification_keys(settings).values()
    )


def _device_digest(secret: str, email: str, issued: int) -> str:
    message = f"device:{email}:{issued}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
