"""Local mail catcher: a real SMTP server that keeps messages in memory, with a read-only web view.

Run it with `python -m devstack.mailcatcher --smtp-port 1025 --http-port 1080`.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import format_datetime
from types import FrameType, TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from jinja2 import Environment, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from sandbox.server import BackgroundServer

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CaughtMessage(EmailMessage):
    """A parsed message plus its SMTP envelope (which may differ from the To/From headers)."""

    envelope_from: str = ""
    envelope_to: tuple[str, ...] = ()
    received_at: float = 0.0

    @property
    def text(self) -> str | None:
        part = self.get_body(preferencelist=("plain",))
        return part.get_content() if isinstance(part, EmailMessage) else None

    @property
    def html(self) -> str | None:
        part = self.get_body(preferencelist=("html",))
        return part.get_content() if isinstance(part, EmailMessage) else None

    def summary(self) -> dict[str, Any]:
        return {
            "envelope_from": self.envelope_from,
            "envelope_to": list(self.envelope_to),
            "received_at": format_datetime_utc(self.received_at),
            "subject": self.get("Subject", ""),
            "from": self.get("From", ""),
            "to": self.get("To", ""),
            "date": self.get("Date", ""),
            "text": self.text,
            "html": self.html,
        }


def format_datetime_utc(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


_POLICY = email.policy.default.clone(message_factory=CaughtMessage)


class _Handler:
    """aiosmtpd handler: parse each DATA and hand it to the catcher."""

    def __init__(self, on_message: Callable[[CaughtMessage], None]) -> None:
        self._on_message = on_message

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # SMTP carries CRLF line ends; normalise so bodies read like any Python string.
        raw = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        message = message_from_bytes(raw, policy=_POLICY)
        assert isinstance(message, CaughtMessage)
        message.envelope_from = envelope.mail_from or ""
        message.envelope_to = tuple(envelope.rcpt_tos)
        message.received_at = time.time()
        self._on_message(message)
        return "250 Message accepted for delivery"


class _BoundController(Controller):
    """aiosmtpd's threaded controller on a pre-bound socket, so port 0 (any free port) works."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>Mail catcher ({{ messages|length }})</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a1f36; }
  article { border: 1px solid #e3e8ee; border-radius: 6px; padding: 1rem; margin-bottom: 1rem; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 0; }
  dt { font-weight: 600; } pre { white-space: pre-wrap; background: #f6f9fc; padding: .8rem; }
  iframe { width: 100%; height: 24rem; border: 1px solid #e3e8ee; }
</style>
</head>
<body>
<h1>Mail catcher</h1>
<p>{{ messages|length }} message(s), newest first.
   JSON: <a href="messages.json">messages.json</a></p>
{% for m in messages %}
<article>
  <h2>{{ m.subject or "(no subject)" }}</h2>
  <dl>
    <dt>From</dt><dd>{{ m["from"] }} (envelope {{ m.envelope_from }})</dd>
    <dt>To</dt><dd>{{ m.to }} (envelope {{ m.envelope_to|join(", ") }})</dd>
    <dt>Date</dt><dd>{{ m.date or m.received_at }}</dd>
  </dl>
  {% if m.text is not none %}<h3>Text</h3><pre>{{ m.text }}</pre>{% endif %}
  {% if m.html is not none %}
  <h3>HTML</h3>
  <iframe sandbox title="HTML body of {{ m.subject }}" srcdoc="{{ m.html }}"></iframe>
  {% endif %}
</article>
{% else %}
<p>No messages yet.</p>
{% endfor %}
</body>
</html>
"""

# The page shows untrusted mail: no scripts anywhere, HTML bodies only in sandboxed frames
# that inherit this policy (so remote images and trackers stay blocked too).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class MailCatcher:
    """A real SMTP server on `host`:`smtp_port` (0 = any free port) that keeps every message.

    With `http_port` (0 = any free port) it also serves `/` (the messages) and
    `/messages.json`.
    """

    def __init__(
        self, host: str = "127.0.0.1", smtp_port: int = 0, http_port: int | None = None
    ) -> None:
        self.host = host
        self._requested_smtp_port = smtp_port
        self._http_port = http_port
        self._messages: list[CaughtMessage] = []
        self._changed = threading.Condition()
        self._controller: _BoundController | None = None
        self._http: BackgroundServer | None = None
        self.smtp_port: int = smtp_port
        self.http_port: int | None = None
        # Called with each message before SMTP's "250" goes back: the sender has not yet
        # seen its mail accepted (the chaos tests kill the worker right there).
        self.on_message: Callable[[CaughtMessage], None] | None = None

    @property
    def messages(self) -> list[CaughtMessage]:
        """A snapshot, oldest first."""
        with self._changed:
            return list(self._messages)

    @property
    def http_url(self) -> str | None:
        return self._http.url if self._http is not None else None

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def wait_for(
        self,
        predicate: Callable[[CaughtMessage], bool] = lambda _message: True,
        timeout: float = 5.0,
    ) -> CaughtMessage:
        """The first message matching `predicate`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self._messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching message within {timeout}s")
                self._changed.wait(remaining)

    def select(self, predicate: Callable[[CaughtMessage], bool]) -> list[CaughtMessage]:
        """The messages matching `predicate`, oldest first."""
        return [m for m in self.messages if predicate(m)]

    def per_recipient(
        self, predicate: Callable[[CaughtMessage], bool]
    ) -> dict[str, list[CaughtMessage]]:
        """Matching messages by their (lower-cased) To address."""
        found: dict[str, list[CaughtMessage]] = {}
        for m in self.select(predicate):
            found.setdefault(str(m.get("To", "")).lower(), []).append(m)
        return found

    def _add(self, message: CaughtMessage) -> None:
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()
        if self.on_message is not None:
            self.on_message(message)
        logger.info(
            "caught mail %r to %s", message.get("Subject", ""), ", ".join(message.envelope_to)
        )

    def start(self) -> Self:
        if self._controller is not None:
            raise RuntimeError("mail catcher already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly, so asyncio sets TCP_NODELAY on accepted connections.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_smtp_port))
        except OSError:
            sock.close()
            raise
        self.smtp_port = sock.getsockname()[1]
        # The controller's own loop: an aiosmtpd thread must not share the caller's loop.
        controller = _BoundController(_Handler(self._add), sock, loop=asyncio.new_event_loop())
        controller.start()
        self._controller = controller
        if self._http_port is not None:
            try:
                self._http = BackgroundServer(
                    self._web_app(), host=self.host, port=self._http_port
                ).start()
            except BaseException:
                self.stop()
                raise
            self.http_port = self._http.port
        logger.info("mail catcher: SMTP on %s:%s, web %s", self.host, self.smtp_port, self.http_url)
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _web_app(self) -> Starlette:
        template = Environment(autoescape=select_autoescape(default_for_string=True)).from_string(
            _PAGE
        )

        def newest_first() -> list[dict[str, Any]]:
            return [message.summary() for message in reversed(self.messages)]

        async def index(_request: Request) -> HTMLResponse:
            return HTMLResponse(template.render(messages=newest_first()), headers=_HEADERS)

        async def messages_json(_request: Request) -> JSONResponse:
            return JSONResponse(newest_first(), headers={"Cache-Control": "no-store"})

        return Starlette(
            routes=[
                Route("/", index, methods=["GET"]),
                Route("/messages.json", messages_json, methods=["GET"]),
            ]
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=1080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # aiosmtpd logs every SMTP command and httpx every readiness probe; keep the catches visible.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with MailCatcher(args.host, args.smtp_port, args.http_port) as catcher:
        logger.info("open %s to read mail; Ctrl+C stops", catcher.http_url)
        stop.wait()
    logger.info("mail catcher stopped")


if __name__ == "__main__":
    main()
