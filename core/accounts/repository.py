"""Queries of the accounts API: one-time password tokens. Callers own the transaction."""

import sqlalchemy as sa
from sqlmodel import Session, col, select

from core.models import SetPasswordToken, utcnow


def get_password_token(session: Session, token_hash: str) -> SetPasswordToken | None:
    return session.exec(
        select(SetPasswordToken).where(SetPasswordToken.token_hash == token_hash)
    ).first()


def claim_password_token(session: Session, token_id: int) -> bool:
    """Mark a token used; only the first of concurrent callers wins, and only before expiry."""
    now = utcnow()
    result = session.execute(
        sa.update(SetPasswordToken)
        .where(col(SetPasswordToken.id) == token_id)
        .where(col(SetPasswordToken.used_at).is_(None))
        .where(col(SetPasswordToken.expires_at) > now)
        .values(used_at=now)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def spend_password_tokens(session: Session, user_id: int) -> None:
    """Every outstanding link of a user stops working (a password was just set)."""
    session.execute(
        sa.update(SetPasswordToken)
        .where(col(SetPasswordToken.user_id) == user_id)
        .where(col(SetPasswordToken.used_at).is_(None))
        .values(used_at=utcnow())
    )


def spend_reset_tokens(session: Session, user_id: int) -> None:
    """An older reset link stops working when a new one is sent."""
    session.execute(
        sa.update(SetPasswordToken)
        .where(col(SetPasswordToken.user_id) == user_id)
        .where(col(SetPasswordToken.purpose) == "reset")
        .where(col(SetPasswordToken.used_at).is_(None))
        .values(used_at=utcnow())
    )
