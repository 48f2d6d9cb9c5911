"""Sends mail over SMTP and renders the emails students and support receive."""

import smtplib
from email.message import EmailMessage
from email.utils import formatdate
from hashlib import sha256
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from core.settings import Settings

TEMPLATES = Path(__file__).parent / "templates"


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

    def send(
        self, *, to: str, subject: str, template: str, message_key: str, **context: Any
    ) -> str:
        """Send one message; `message_key` makes the Message-ID stable across retries."""
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
        s = self._settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=20) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(msg)
        return str(msg["Message-ID"])
