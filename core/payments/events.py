"""What a Stripe event handler gets and returns: the shape of the webhook table's entries.

Each domain owns the handlers of its events (`core/payments/revocations.py` for charges,
`core/enrollment/webhooks.py` for Checkout Sessions); the table joins them by event type.
A handler returns the webhook's outcome (recorded on the stripe_event row); it raises
`StripeUnreachable` or `core.temporal.TemporalUnavailable` when Stripe should redeliver.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from temporalio.client import Client

from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings


class StripeUnreachable(Exception):
    """Stripe did not answer a read the handler needs; the event should be redelivered."""


@dataclass(frozen=True)
class EventContext:
    gateway: StripeGateway
    client: Client
    settings: Settings
    engine: sa.Engine
    # The Stripe event's id: what the enrollment's owner de-duplicates a redelivery by.
    event_id: str = ""


# (event type, the event's data.object, context) -> outcome
EventHandler = Callable[[str, dict[str, Any], EventContext], Awaitable[str]]
