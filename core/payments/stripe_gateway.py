"""Every call the app makes to Stripe, through the official SDK's StripeClient.

The same code talks to real Stripe and to the offline sandbox; only the base address
and key differ. Results are returned as plain dicts so callers never handle StripeObjects.
"""

import json
from collections.abc import Mapping
from typing import Any

import stripe

from core.settings import Settings
from core.tracks import Track

CHECKOUT_SESSION_PLACEHOLDER = "{CHECKOUT_SESSION_ID}"


class SharedHTTPClient(stripe.HTTPXClient):
    """One connection pool (one httpx.Client) for every thread that calls Stripe. The
    SDK's default keeps a requests Session per thread, each with its own TLS context
    (0.7 MB with the CA bundle): 40 threadpool threads held 27.5 MB for nothing. The SDK's
    form body goes as `content` (httpx deprecates raw `data`)."""

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> list[Any]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        kwargs["content"] = kwargs.pop("data") or None
        return [args, kwargs]


class StripeGateway:
    def __init__(self, settings: Settings) -> None:
        self._client = stripe.StripeClient(
            settings.stripe_api_key,
            base_addresses={"api": settings.stripe_base},
            max_network_retries=2,
            http_client=SharedHTTPClient(allow_sync_methods=True),
        )
        self._webhook_secret = settings.stripe_webhook_secret

    def create_checkout_session(
        self,
        *,
        email: str,
        name: str,
        track: Track,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
        expires_at: int | None = None,
        recovery: bool = False,
        cohort: str | None = None,
    ) -> dict[str, Any]:
        """`expires_at`: when the Session (and the seat it holds) expires; `recovery`: an
        expired Session gets Stripe's recovery link, and the page asks for consent to
        promotions (what emailing that link needs)."""
        metadata = {"email": email, "name": name, "track": track.code, "anonymous_checkout": "true"}
        if cohort:
            metadata["cohort"] = cohort
        params: dict[str, Any] = {
            "mode": "payment",
            "customer_email": email,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": track.currency,
                        "unit_amount": track.price_cents,
                        "product_data": {"name": f"Onramp {track.title} track"},
                    },
                }
            ],
            "metadata": metadata,
            # Session metadata is not copied to the PaymentIntent; payment_intent events need it.
            "payment_intent_data": {"metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if expires_at is not None:
            params["expires_at"] = expires_at
        if recovery:
            params["after_expiration"] = {"recovery": {"enabled": True}}
            params["consent_collection"] = {"promotions": "auto"}
        session = self._client.v1.checkout.sessions.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )
        return session.to_dict()

    def retrieve_checkout_session(
        self, session_id: str, *, expand_line_items: bool = False
    ) -> dict[str, Any]:
        # With the line items, the payment's charge: a refund or dispute that came first.
        params: dict[str, Any] = (
            {"expand": ["line_items", "payment_intent.latest_charge"]} if expand_line_items else {}
        )
        return self._client.v1.checkout.sessions.retrieve(
            session_id,
            params,  # type: ignore[arg-type]
        ).to_dict()

    def find_session_for_payment_intent(self, payment_intent_id: str) -> dict[str, Any] | None:
        page = self._client.v1.checkout.sessions.list({"payment_intent": payment_intent_id})
        return page.data[0].to_dict() if page.data else None

    def list_paid_sessions(self, created_gte: int, limit: int = 100) -> list[dict[str, Any]]:
        page = self._client.v1.checkout.sessions.list(
            {"created": {"gte": created_gte}, "status": "complete", "limit": limit}
        )
        return [s.to_dict() for s in page.auto_paging_iter() if s.payment_status == "paid"]

    def refund_payment(self, payment_intent_id: str, idempotency_key: str) -> dict[str, Any]:
        refund = self._client.v1.refunds.create(
            {"payment_intent": payment_intent_id}, {"idempotency_key": idempotency_key}
        )
        return refund.to_dict()

    def verify_webhook(self, payload: bytes, signature: str) -> dict[str, Any]:
        """Raises stripe.SignatureVerificationError or ValueError for anything not from Stripe.

        Stripe's own check of the signature over the raw body, then plain JSON: the event is
        used as a dict, so building StripeObjects (as `construct_event` does) is skipped."""
        text = payload.decode("utf-8")  # UnicodeDecodeError is a ValueError
        stripe.WebhookSignature.verify_header(text, signature, self._webhook_secret, tolerance=300)
        event = json.loads(text)
        if not isinstance(event, dict):
            raise ValueError("a Stripe event is a JSON object")
        return event
