"""The success page's body: what the buyer (or anyone holding the session id) may see,
and the one automatic login of a checkout.
"""

import hmac
import logging
from datetime import timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from api.errors import NotFound
from core import repository as repo
from core.accounts.security import TokenPair, issue_tokens
from core.contracts import (
    ACCESS_ENDED_STATUSES,
    EnrollmentState,
    ToolStatus,
)
from core.crypto import token_hash
from core.db import session_scope
from core.models import utcnow
from core.settings import Settings
from core.tracks import (
    TOOL_CODESERVER,
    TOOL_JUPYTER,
    TOOL_LABELS,
    TOOL_PREFECT,
    TOOL_SUPERSET,
    TRACKS,
)

log = logging.getLogger(__name__)


def success_body(
    engine: sa.Engine,
    settings: Settings,
    state: EnrollmentState,
    browser_nonce: str | None,
    viewer_id: int | None = None,
) -> tuple[dict[str, Any], TokenPair | None]:
    """The contract's 200 body, for the buyer: the browser that started the checkout, or
    the enrolled student logged in. Anyone else holding the session id (it leaks through
    Referer headers, logs and screenshots) gets the status and step labels only.

    The page polls it: one statement on an autocommit connection (no transaction to end),
    and a write transaction only to hand out the one auto-login."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rows = repo.landing_rows(conn, state.checkout_session_id)
    if not rows:
        raise NotFound("No enrollment for this session", error="Unknown session")
    view = rows[0]
    tools = {r.tool: r for r in rows if r.tool is not None}
    track_tools = TRACKS[view.track].tools
    if not _is_buyer(view, browser_nonce, viewer_id):
        return {
            "success": True,
            "login_required": True,
            "login_reason": LoginReason.OTHER_BROWSER,
            "track": view.track,
            "enrollment_status": state.status,
            "tools": [
                {"tool": t, "label": TOOL_LABELS[t], "status": _tool_status(tools, t)}
                for t in track_tools
            ],
            "progress": state.progress("public"),
        }, None
    tokens = (
        _auto_login(engine, settings, view) if _auto_login_allowed(view, browser_nonce) else None
    )

    def url(tool: str) -> str:
        record = tools.get(tool)
        return record.url if record and record.status == ToolStatus.READY else ""

    body: dict[str, Any] = {
        "success": True,
        "user": {
            "id": view.user_id,
            "email": view.email,
            "name": view.name,
            "role": view.role,
            "track": view.track,
            "enrollment_status": view.enrollment_status,
        },
        "login_required": tokens is None,
        "login_reason": None if tokens is not None else _why_no_login(view, viewer_id),
        "track": view.track,
        "tools_provisioned": all(
            tools.get(t) is not None and tools[t].status == ToolStatus.READY for t in track_tools
        ),
        "workspace_url": url(TOOL_CODESERVER),
        "superset_url": url(TOOL_SUPERSET),
        "prefect_url": url(TOOL_PREFECT),
        "jupyter_url": url(TOOL_JUPYTER),
        "enrollment_status": state.status,
        "tools": [
            {
                "tool": t,
                "label": TOOL_LABELS[t],
                "status": _tool_status(tools, t),
                "url": url(t),
                "development": bool(tools[t].development) if t in tools else False,
            }
            for t in track_tools
        ],
        "progress": state.progress("student"),
    }
    if tokens is not None:
        body["access"], body["refresh"] = tokens.access, tokens.refresh
    return body, tokens


def stream_audience(
    engine: sa.Engine, session_id: str, browser_nonce: str | None, viewer_id: int | None
) -> str:
    """Step details in plain words for the buyer (this browser, or the student logged in);
    none for anyone else holding the id."""
    with engine.connect() as conn:
        row = repo.viewer_row(conn, session_id)
    return "student" if row is not None and _is_buyer(row, browser_nonce, viewer_id) else "public"


def _auto_login(engine: sa.Engine, settings: Settings, view: Any) -> TokenPair | None:
    """Claim the enrollment's one auto-login (the first caller in the window wins) and issue
    its tokens in the same transaction."""
    with session_scope(engine) as db:
        user = repo.get_user(db, view.user_id)
        assert user is not None and user.id is not None
        if user.email_proven or not user.is_active:
            return None  # the owner proved the address since (or access ended): it lapsed
        window = timedelta(minutes=settings.auto_login_window_minutes)
        if not repo.claim_auto_login(db, view.id, not_before=utcnow() - window):
            return None
        tokens = issue_tokens(db, settings, user)
        repo.add_audit(db, "auto_login", actor="student", enrollment_id=view.id, user_id=user.id)
        return tokens


class LoginReason(StrEnum):
    """Why the success page asks the buyer to log in, so it can say so plainly."""

    OTHER_BROWSER = "other_browser"  # this browser did not start the checkout
    EXISTING_ACCOUNT = "existing_account"  # the email already had an account: attached
    PASSWORD_SET = "password_set"  # the owner chose a password since: log in with it
    ALREADY_USED = "already_used"  # this checkout's one automatic login was used
    LOGGED_IN = "logged_in"  # the student is logged in already (another device)
    EXPIRED = "expired"  # the automatic login's window passed


def _why_no_login(view: Any, viewer_id: int | None) -> LoginReason:
    if viewer_id is not None and viewer_id == view.user_id:
        return LoginReason.LOGGED_IN
    if not view.account_created:
        return LoginReason.EXISTING_ACCOUNT
    if view.email_verified_at is not None or view.has_password:
        return LoginReason.PASSWORD_SET
    if view.tokens_issued_at is not None:
        return LoginReason.ALREADY_USED
    return LoginReason.EXPIRED


def _tool_status(tools: dict[str, Any], tool: str) -> str:
    return str(tools[tool].status) if tool in tools else ToolStatus.PENDING


def _nonce_matches(enrollment: Any, browser_nonce: str | None) -> bool:
    return bool(
        enrollment.browser_nonce_hash
        and browser_nonce
        and hmac.compare_digest(token_hash(browser_nonce), enrollment.browser_nonce_hash)
    )


def _is_buyer(enrollment: Any, browser_nonce: str | None, viewer_id: int | None) -> bool:
    if _nonce_matches(enrollment, browser_nonce):
        return True
    return viewer_id is not None and viewer_id == enrollment.user_id and enrollment.is_active


def _auto_login_allowed(enrollment: Any, browser_nonce: str | None) -> bool:
    """Tokens only for the browser that paid, for an account this payment created, while
    the enrollment gives access."""
    return bool(
        enrollment.enrollment_row_status not in ACCESS_ENDED_STATUSES
        and enrollment.is_active
        and enrollment.email_verified_at is None
        and not enrollment.has_password
        and enrollment.account_created
        and _nonce_matches(enrollment, browser_nonce)
        and enrollment.tokens_issued_at is None
    )
