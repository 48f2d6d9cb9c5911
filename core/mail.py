"""Sends mail over SMTP and renders the emails students and support receive."""

import smtplib
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_string
from email.message import EmailMessage
from email.policy import default as MAIL_POLICY
from email.utils import formatdate
from hashlib import sha256
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlmodel import Session

from core import repository as repo
from core.crypto import new_token, token_hash
from core.models import Enrollment, OutboxMessage, SetPasswordToken, User, utcnow
from core.settings import Settings
from core.tracks import TOOL_LABELS, TRACKS

TEMPLATES = Path(__file__).parent / "mail_templates"


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            # Names come from buyers: escape everything in HTML.
            autoescape=select_autoescape(["html"]),
            keep_trailing_newline=True,
        )

    def render(self, template: str, **context: Any) -> tuple[str, str]:
        text = self._env.get_template(f"{template}.txt").render(**context)
        html = self._env.get_template(f"{template}.html").render(**context)
        return text, html

    def compose(
        self, *, to: str, subject: str, template: str, message_key: str, **context: Any
    ) -> EmailMessage:
        """One message; `message_key` makes the Message-ID stable across retries."""
        text, html = self.render(template, **context)
        msg = EmailMessage()
        msg["From"] = self._settings.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        # The same message on every retry: receivers deduplicate on the Message-ID.
        site = sha256(self._settings.public_base_url.encode()).hexdigest()[:12]
        msg["Message-ID"] = f"<{message_key}.{site}@onramp.local>"
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    def deliver(self, msg: EmailMessage) -> str:
        s = self._settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=20) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(msg)
        return str(msg["Message-ID"])

    def send(
        self, *, to: str, subject: str, template: str, message_key: str, **context: Any
    ) -> str:
        """Compose and send now: for mail that carries no token (alerts, notices)."""
        return self.deliver(
            self.compose(
                to=to, subject=subject, template=template, message_key=message_key, **context
            )
        )


@dataclass
class WelcomeTool:
    tool: str
    url: str
    development: bool = False


def queue_welcome(
    mailer: "Mailer",
    s: Session,
    settings: Settings,
    *,
    enrollment: Enrollment,
    user: User,
    tools: list[WelcomeTool],
    pending_tools: list[str],
    with_link: bool,
    message_key: str,
) -> OutboxMessage:
    """The welcome email, for the first send and for support's resends: one wording.

    The message, and with `with_link` its single-use set-password token, are added to the
    session: the caller commits them, then sends the stored message (`send_outbox`), so a
    crash between SMTP's answer and our commit cannot mail a link that never worked.
    """
    project = repo.get_first_project(s, enrollment.track)
    assert project is not None and user.id is not None
    set_password_url = None
    if with_link:
        raw = new_token()
        s.add(
            SetPasswordToken(
                user_id=user.id,
                token_hash=token_hash(raw),
                purpose="welcome",
                expires_at=utcnow() + timedelta(hours=settings.set_password_token_hours),
            )
        )
        set_password_url = f"{settings.public_base_url}/set-password?token={raw}"
    msg = mailer.compose(
        to=user.email,
        subject=(
            "Welcome to Onramp: set your password"
            if set_password_url and enrollment.account_created
            else "Your new Onramp enrollment is ready"
            + (": set your password" if set_password_url else "")
        ),
        template="welcome",
        message_key=message_key,
        name=user.name,
        username=user.username,
        track_title=TRACKS[enrollment.track].title,
        set_password_url=set_password_url,
        link_hours=settings.set_password_token_hours,
        login_url=f"{settings.public_base_url}/login",
        dashboard_url=f"{settings.public_base_url}/student/dashboard",
        tools=[
            {"label": TOOL_LABELS[t.tool], "url": t.url, "development": t.development}
            for t in tools
        ],
        pending_tools=[TOOL_LABELS[t] for t in pending_tools],
        project_title=project.title,
        project_guide=project.guide,
        support_email=settings.support_email,
    )
    row = OutboxMessage(
        message_key=message_key,
        enrollment_id=enrollment.id,
        recipient=user.email,
        kind="set_password" if set_password_url else "existing_account",
        raw=msg.as_string(policy=MAIL_POLICY),
    )
    s.add(row)
    return row


def send_outbox(mailer: "Mailer", row: OutboxMessage) -> None:
    """Send a stored message as it was committed (the same bytes on every retry)."""
    msg = message_from_string(row.raw, policy=MAIL_POLICY)
    assert isinstance(msg, EmailMessage)
    mailer.deliver(msg)
