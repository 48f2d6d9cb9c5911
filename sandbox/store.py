"""In-memory state of the sandbox: every object, event and idempotent response behind one lock."""

from __future__ import annotations

import itertools
import secrets
import string
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

_ALPHABET = string.ascii_letters + string.digits

DeliveryStatus = Literal["pending", "delivered", "failed", "no_endpoint"]


def new_id(prefix: str, length: int = 24) -> str:
    """Stripe-looking ids (`pi_3Pq...`): a prefix and random base62 characters."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass
class SessionRecord:
    session: dict[str, Any]
    line_items: list[dict[str, Any]]
    # Applied to the PaymentIntent when the payer pays (Stripe creates it only then).
    payment_intent_data: dict[str, Any]
    seq: int


@dataclass
class DeliveryAttempt:
    number: int
    at: int
    url: str
    status_code: int | None
    error: str | None
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "at": self.at,
            "url": self.url,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


@dataclass
class EventRecord:
    event: dict[str, Any]
    # Serialised once, so every attempt (and a resend) signs and sends the same bytes.
    payload: str
    seq: int
    status: DeliveryStatus = "pending"
    attempts: list[DeliveryAttempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.event["id"],
            "type": self.event["type"],
            "created": self.event["created"],
            "delivery": {
                "status": self.status,
                "attempts": [attempt.to_dict() for attempt in self.attempts],
            },
            "event": self.event,
        }


@dataclass
class IdempotentEntry:
    fingerprint: tuple[str, str, str]
    # None while the first request with this key is still running.
    response: tuple[int, bytes, str] | None = None


class Store:
    """All sandbox state. Hold `lock` for any read-modify-write; it is re-entrant."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._seq = itertools.count(1)
        self.sessions: dict[str, SessionRecord] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.events: dict[str, EventRecord] = {}
        self.idempotency: dict[str, IdempotentEntry] = {}

    def next_seq(self) -> int:
        """Creation order; `created` has one-second resolution, so lists sort on this."""
        return next(self._seq)
