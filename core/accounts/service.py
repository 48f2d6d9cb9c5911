"""Account use cases: log in, rotate and end sessions, set and reset passwords, create staff.

Services never commit: the request owns the transaction (the reset email, sent after the
answer, owns its own).
"""

import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session

from core import repository as repo
from core.accounts import repository as auth_repo
from core.accounts.emails import normalise_email
from core.accounts.security import (
    RefreshReuse,
    TokenError,
    TokenPair,
    hash_password,
    issue_tokens,
    needs_rehash,
    password_problem,
    revoke_family,
    revoke_refresh,
    revoke_user_sessions,
    rotate_refresh,
    session_id_of,
    verify_password,
)
from core.crypto import new_token, token_hash
from core.db import session_scope
from core.errors import AppError, NotAuthenticated
from core.mail import Mailer
from core.models import Role, SetPasswordToken, User, utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

RESET_PURPOSE = "reset"


class InvalidCredentials(AppError):
    status_code = 401
    error = "Invalid credentials"


class InvalidLink(AppError):
    status_code = 400
    error = "Invalid link"


class SessionReused(NotAuthenticated):
    """A rotated refresh token was replayed; the revocation it caused must be committed."""


def login(db: Session, settings: Settings, email: str, password: str) -> tuple[User, TokenPair]:
    user = repo.get_user_by_email(db, email)
    # Verified even for unknown emails: the answer takes as long either way.
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.is_active:
        raise InvalidCredentials("Wrong email or password.")
    assert user.password_hash is not None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    tokens = issue_tokens(db, settings, user)
    repo.add_audit(db, "login", actor=f"{user.role}:{user.id}", user_id=user.id)
    return user, tokens


def refresh(db: Session, settings: Settings, refresh_token: str) -> tuple[User, TokenPair]:
    try:
        return rotate_refresh(db, settings, refresh_token)
    except RefreshReuse:
        raise SessionReused(
            "This refresh token was already used; every session of that login was ended."
        ) from None
    except TokenError:
        raise NotAuthenticated("Your session has expired; log in again.") from None


def logout(
    db: Session, settings: Settings, refresh_token: str | None, access_token: str | None
) -> None:
    """End the login of whichever token verifies; anything else is ignored (idempotent)."""
    if refresh_token:
        revoke_refresh(db, settings, refresh_token)
    sid = session_id_of(settings, access_token, "access")
    if sid:
        revoke_family(db, sid)


def set_password(
    db: Session, settings: Settings, token: str, password: str
) -> tuple[User, TokenPair]:
    """Spend a welcome or reset link: new password, every other login ended, logged in."""
    row = auth_repo.get_password_token(db, token_hash(token))
    user = repo.get_user(db, row.user_id) if row is not None else None
    if row is None or row.id is None or user is None or user.id is None or not user.is_active:
        raise _invalid_link()
    problem = password_problem(password, user.email)
    if problem:  # checked before the link is spent, so the student can try again
        raise AppError(problem, error="Weak password", field="password")
    if not auth_repo.claim_password_token(db, row.id):
        raise _invalid_link()
    user.password_hash = hash_password(password)
    user.updated_at = utcnow()
    # The link reached the mailbox: this is the email's owner. Whoever else paid with the
    # address loses every session (the revocation below) and any auto-login still unclaimed.
    first_proof = user.email_verified_at is None
    user.email_verified_at = user.email_verified_at or utcnow()
    auth_repo.spend_password_tokens(db, user.id)
    revoke_user_sessions(db, user.id)
    tokens = issue_tokens(db, settings, user)
    repo.add_audit(
        db,
        "password_set",
        actor=f"{user.role}:{user.id}",
        user_id=user.id,
        purpose=row.purpose,
        email_proven=first_proof,
    )
    return user, tokens


def _invalid_link() -> InvalidLink:
    # One answer for unknown, used and expired links: nothing to learn by probing.
    return InvalidLink(
        "This link is not valid any more. Ask for a new one on the forgot-password page."
    )


def send_reset_link(engine: sa.Engine, settings: Settings, email: str) -> None:
    """Runs after the 202 went out, so the answer never tells whether the email exists."""
    try:
        with session_scope(engine) as db:
            user = repo.get_user_by_email(db, email)
            if user is None or user.id is None or not user.is_active:
                return
            auth_repo.spend_reset_tokens(db, user.id)
            raw = new_token()
            db.add(
                SetPasswordToken(
                    user_id=user.id,
                    token_hash=token_hash(raw),
                    purpose=RESET_PURPOSE,
                    expires_at=utcnow() + timedelta(minutes=settings.reset_password_token_minutes),
                )
            )
            repo.add_audit(db, "password_reset_sent", user_id=user.id)
            # The token row commits only once the mail went out (the scope commits last).
            Mailer(settings).send(
                to=user.email,
                subject="Reset your Onramp password",
                template="reset_password",
                message_key=f"reset-{token_hash(raw)[:16]}",
                name=user.name,
                username=user.username,
                reset_url=f"{settings.public_base_url}/set-password?token={raw}",
                link_minutes=settings.reset_password_token_minutes,
                forgot_url=f"{settings.public_base_url}/forgot-password",
                support_email=settings.support_email,
            )
    except Exception as err:  # noqa: BLE001 (after the answer: nobody to tell but the log)
        log.warning("could not send a password reset email: %s", type(err).__name__)


def create_staff_user(session: Session, email: str, name: str, password: str) -> User:
    """A staff account with a password; for the support CLI. The caller commits."""
    try:
        email = normalise_email(email)
    except ValueError as err:
        raise AppError(str(err), error="Invalid email", field="email") from None
    name = " ".join(name.split())
    if not 1 <= len(name) <= 100:
        raise AppError("name must be 1 to 100 characters", error="Invalid name", field="name")
    problem = password_problem(password, email)
    if problem:
        raise AppError(problem, error="Weak password", field="password")
    if repo.get_user_by_email(session, email) is not None:
        raise AppError(
            "An account with this email already exists.", status_code=409, error="Account exists"
        )
    user = User(
        email=email,
        username=repo.new_username(session, email),
        name=name,
        password_hash=hash_password(password),
        role=Role.STAFF,
        track=None,
        enrollment_status="STAFF",
        email_verified_at=utcnow(),  # support vouches for a staff address
    )
    session.add(user)
    session.flush()
    repo.add_audit(session, "staff_created", actor="support-cli", user_id=user.id)
    return user
