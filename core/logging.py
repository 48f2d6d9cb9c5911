"""Structured JSON logs; session ids and tokens are masked wherever they appear."""

import json
import logging
import re
import sys
from datetime import UTC, datetime

# Checkout Session ids travel in URLs and grant a one-time view: never log them whole.
_SECRETS = [
    (re.compile(r"(cs_(?:test|live)_)[A-Za-z0-9]{6,}"), r"\1***"),
    # A JWT: the first `eyJ` of a run of base64url characters, then two more dotted parts.
    # Tried once per run, without backtracking: linear even on `eyJeyJeyJ...` (the access
    # log writes any URL a client sends, on the event loop).
    (
        re.compile(
            r"(?<![A-Za-z0-9_-])(?>([A-Za-z0-9_-]*?)eyJ)"
            r"[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+"
        ),
        r"\1<jwt>",
    ),
    (re.compile(r"(token=)[A-Za-z0-9_\-.]+"), r"\1***"),
    (re.compile(r"(whsec_|sk_(?:test|live)_)[A-Za-z0-9_]+"), r"\1***"),
]


def redact(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class JsonFormatter(logging.Formatter):
    EXTRA = ("enrollment_id", "workflow_id", "event_id", "event_type", "outcome", "tool")

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in self.EXTRA:
            if hasattr(record, key):
                data[key] = redact(str(getattr(record, key)))
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log prints full URLs (with session ids); route it through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
