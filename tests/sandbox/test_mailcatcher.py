"""The development mail catcher: real SMTP in, parsed messages and a web view out."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import httpx
import pytest

from devstack.mailcatcher import MailCatcher


def _welcome_mail(subject: str = "Welcome to Onramp") -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "Onramp <welcome@onramp.local>"
    message["To"] = "ada@example.com"
    message.set_content("Hello Ada,\nset your password here: http://x/set")
    message.add_alternative(
        "<p>Hello Ada, <a href='http://x/set'>set your password</a></p>"
        "<script>alert('mail')</script>",
        subtype="html",
    )
    return message


def _send(port: int, message: EmailMessage, to: list[str] | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.send_message(message, from_addr="bounce@onramp.local", to_addrs=to)


class TestMailCatcher:
    def test_catches_text_and_html_parts_with_the_envelope(self) -> None:
        with MailCatcher() as catcher:
            assert catcher.smtp_port > 0
            _send(catcher.smtp_port, _welcome_mail(), to=["ada@example.com", "bcc@example.com"])

            caught = catcher.wait_for(lambda m: m["To"] == "ada@example.com", timeout=3)

            assert caught["Subject"] == "Welcome to Onramp"
            assert caught.text == "Hello Ada,\nset your password here: http://x/set\n"
            assert caught.html is not None and "set your password</a>" in caught.html
            assert caught.envelope_from == "bounce@onramp.local"
            assert caught.envelope_to == ("ada@example.com", "bcc@example.com")
            assert len(catcher.messages) == 1
            catcher.clear()
            assert catcher.messages == []

    def test_wait_for_times_out_without_a_match(self) -> None:
        with MailCatcher() as catcher:
            _send(catcher.smtp_port, _welcome_mail())
            with pytest.raises(TimeoutError):
                catcher.wait_for(lambda m: m["Subject"] == "other", timeout=0.2)

    def test_web_view_lists_messages_escaped(self) -> None:
        with MailCatcher(http_port=0) as catcher:
            _send(catcher.smtp_port, _welcome_mail(subject="<b>Hi</b> & welcome"))
            catcher.wait_for(timeout=3)
            assert catcher.http_url is not None

            with httpx.Client(base_url=catcher.http_url, trust_env=False) as http:
                listing = http.get("/messages.json").json()
                page = http.get("/")

            assert listing[0]["subject"] == "<b>Hi</b> & welcome"
            assert listing[0]["envelope_to"] == ["ada@example.com"]
            assert "Hello Ada" in listing[0]["text"]
            assert page.status_code == 200
            assert "&lt;b&gt;Hi&lt;/b&gt; &amp; welcome" in page.text
            assert "<script>" not in page.text
            assert "<iframe sandbox" in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"]
