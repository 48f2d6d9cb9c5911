"""JWT access and refresh tokens (pyjwt) and password hashing (Argon2).

Access tokens are short-lived and stateless. Refresh tokens are single-use: each is
stored hashed, rotating one marks it used, and presenting a used one again revokes its
whole family (a stolen token replayed after the owner refreshed).
"""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, select

from core.crypto import token_hash
from core.models import RefreshToken, User, utcnow
from core.settings import Settings

ALGORITHM = "HS256"
ISSUER = "onramp"
AUDIENCE = "onramp-api"
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()


class TokenError(Exception):
    """Any token that must not be accepted; the message is safe to show."""


@dataclass
class TokenPair:
    access: str
    refresh: str
    access_expires_in: int


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str, email: str = "") -> str | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 256:
        return "Use at most 256 characters."
    if email and password.lower() == email.lower():
        return "Do not use your email address as your password."
    if len(set(password)) < 4:
        return "Use a less repetitive password."
    return None


def _encode(settings: Settings, claims: dict[str, Any]) -> str:
    return jwt.encode(
        claims, settings.jwt_secret, algorithm=ALGORITHM, headers={"kid": settings.jwt_key_id}
    )


def decode(settings: Settings, token: str, token_type: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
        if header.get("kid") != settings.jwt_key_id:
            raise TokenError("unknown signing key")
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],  # pinned: "none" and other algorithms are refused
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti", "typ"]},
        )
    except jwt.PyJWTError as err:
        raise TokenError("invalid or expired token") from err
    if claims.get("typ") != token_type:
        raise TokenError("wrong token type")
    return claims


def issue_tokens(
    session: Session, settings: Settings, user: User, family: str | None = None
) -> TokenPair:
    now = utcnow()
    access_ttl = timedelta(minutes=settings.access_token_minutes)
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(user.id), "iat": now}
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
    assert user.id is not None
    session.add(
        RefreshToken(
            user_id=user.id,
            jti=jti,
            token_hash=token_hash(refresh),
            family=family or secrets.token_hex(16),
            expires_at=expires,
        )
    )
    return TokenPair(access, refresh, int(access_ttl.total_seconds()))


def rotate_refresh(session: Session, settings: Settings, refresh: str) -> tuple[User, TokenPair]:
    claims = decode(settings, refresh, "refresh")
    row = session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh))
    ).first()
    if row is None or row.jti != claims["jti"]:
        raise TokenError("unknown refresh token")
    if row.revoked_at is not None:
        raise TokenError("refresh token revoked")
    if row.used_at is not None:
        revoke_family(session, row.family)
        raise TokenError("refresh token reused; all sessions of this login were ended")
    # Single use even under a race: only one concurrent rotation can flip used_at.
    claimed = session.execute(
        sa.update(RefreshToken)
        .where(col(RefreshToken.id) == row.id)
        .where(col(RefreshToken.used_at).is_(None))
        .values(used_at=utcnow())
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        revoke_family(session, row.family)
        raise TokenError("refresh token reused; all sessions of this login were ended")
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise TokenError("account disabled")
    return user, issue_tokens(session, settings, user, family=row.family)


def revoke_family(session: Session, family: str) -> None:
    session.execute(
        sa.update(RefreshToken)
        .where(col(RefreshToken.family) == family)
        .where(col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )


def revoke_refresh(session: Session, settings: Settings, refresh: str) -> None:
    try:
        decode(settings, refresh, "refresh")
    except TokenError:
        return
    row = session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh))
    ).first()
    if row is not None:
        revoke_family(session, row.family)


def aware(dt: datetime) -> datetime:
    """SQLite drops time zones; every stored timestamp is UTC."""
    from datetime import UTC

    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
