"""The sandbox's Stripe behaviour: Checkout Sessions, payments, refunds, disputes, events."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import stripe

from sandbox import objects
from sandbox.errors import (
    CardDeclined,
    PayerInputError,
    SessionNotPayable,
    StripeError,
    parameter_invalid,
    parameter_missing,
    resource_missing,
)
from sandbox.fixtures import Fixtures
from sandbox.params import (
    Params,
    get_bool,
    get_enum,
    get_expand,
    get_hash,
    get_int,
    get_list,
    get_metadata,
    get_str,
    path_name,
    reject_unknown,
)
from sandbox.store import (
    DeliveryAttempt,
    DeliveryStatus,
    EventRecord,
    IdempotentEntry,
    SessionRecord,
    Store,
    new_id,
)

logger = logging.getLogger(__name__)

# Events say which API version rendered them; use the one the SDK in this repo speaks.
API_VERSION: str = stripe.api_version

SESSION_DEFAULT_TTL = 24 * 3600
SESSION_MIN_TTL = 30 * 60
RECOVERY_TTL = 30 * 24 * 3600  # an expired Session's recovery URL is valid 30 days
# Callers compute expires_at a moment before the request lands; do not fail them on that.
SESSION_TTL_SLACK = 60
DISPUTE_RESPONSE_WINDOW = 7 * 24 * 3600
MAX_AMOUNT = 99_999_999
# Stripe's minimum charge per currency, in the currency's smallest unit.
MINIMUM_AMOUNT = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}

# Every parameter Stripe accepts on POST /v1/checkout/sessions (these lists match the SDK's
# stripe.params TypedDicts; tests/sandbox/test_stripe_definitions.py checks). The sandbox acts
# on some and ignores the rest, but a name outside this list is a typo Stripe would reject too.
# API version 2026-09-30 replaced `payment_method_types` with `allowed_payment_method_types`.
SESSION_CREATE_PARAMS = frozenset(
    {
        "adaptive_pricing", "after_expiration", "allow_promotion_codes",
        "allowed_payment_method_types", "automatic_tax", "billing_address_collection",
        "branding_settings", "cancel_url", "client_reference_id", "consent_collection",
        "currency", "custom_fields", "custom_text", "customer", "customer_account",
        "customer_creation", "customer_email", "customer_update", "discounts",
        "excluded_payment_method_types", "expand", "expires_at", "integration_identifier",
        "invoice_creation", "line_items", "locale", "managed_payments", "metadata", "mode",
        "name_collection", "optional_items", "origin_context", "payment_intent_data",
        "payment_method_collection", "payment_method_configuration", "payment_method_data",
        "payment_method_options", "permissions", "phone_number_collection",
        "redirect_on_completion", "return_url", "saved_payment_method_options",
        "setup_intent_data", "shipping_address_collection", "shipping_options",
        "submit_type", "subscription_data", "success_url", "tax_id_collection", "ui_mode",
        "wallet_options",
    }
)  # fmt: skip
LINE_ITEM_PARAMS = frozenset(
    {
        "adjustable_quantity",
        "metadata",
        "price",
        "price_data",
        "quantity",
        "tax_rates",
    }
)
PRICE_DATA_PARAMS = frozenset(
    {
        "currency",
        "product",
        "product_data",
        "recurring",
        "tax_behavior",
        "unit_amount",
        "unit_amount_decimal",
    }
)
PRODUCT_DATA_PARAMS = frozenset(
    {"description", "images", "metadata", "name", "tax_code", "tax_details", "unit_label"}
)
PAYMENT_INTENT_DATA_PARAMS = frozenset(
    {
        "application_fee_amount", "capture_method", "description", "metadata", "on_behalf_of",
        "receipt_email", "setup_future_usage", "shipping", "statement_descriptor",
        "statement_descriptor_suffix", "transfer_data", "transfer_group",
    }
)  # fmt: skip
SESSION_LIST_PARAMS = frozenset(
    {
        "created", "customer", "customer_account", "customer_details", "ending_before",
        "expand", "limit", "payment_intent", "payment_link", "starting_after", "status",
        "subscription",
    }
)  # fmt: skip
REFUND_CREATE_PARAMS = frozenset(
    {
        "amount", "charge", "currency", "customer", "expand", "instructions_email", "metadata",
        "origin", "payment_intent", "reason", "refund_application_fee", "reverse_transfer",
    }
)  # fmt: skip
EVENT_LIST_PARAMS = frozenset(
    {
        "created",
        "delivery_success",
        "ending_before",
        "expand",
        "limit",
        "starting_after",
        "type",
        "types",
    }
)
PAGE_PARAMS = frozenset({"ending_before", "expand", "limit", "starting_after"})

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY = re.compile(r"^[a-z]{3}$")
_EXPIRY = re.compile(r"^\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*$")


@dataclass(frozen=True)
class RequestContext:
    """The API request that caused an event (Stripe puts it in `event.request`)."""

    request_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class KnownCard:
    brand: str
    decline_code: str | None = None
    error_code: str = "card_declined"
    message: str = ""


# Stripe's documented test card numbers; anything else is "invalid", as in test mode.
TEST_CARDS: dict[str, KnownCard] = {
    "4242424242424242": KnownCard("visa"),
    "4000056655665556": KnownCard("visa"),
    "5555555555554444": KnownCard("mastercard"),
    "378282246310005": KnownCard("amex"),
    "4000000000000002": KnownCard("visa", "generic_decline", message="Your card was declined."),
    "4000000000009995": KnownCard(
        "visa", "insufficient_funds", message="Your card has insufficient funds."
    ),
    "4000000000009987": KnownCard("visa", "lost_card", message="Your card was declined."),
    "4000000000009979": KnownCard("visa", "stolen_card", message="Your card was declined."),
    "4000000000000069": KnownCard(
        "visa", "expired_card", error_code="expired_card", message="Your card has expired."
    ),
    "4000000000000127": KnownCard(
        "visa",
        "incorrect_cvc",
        error_code="incorrect_cvc",
        message="Your card's security code is incorrect.",
    ),
    "4000000000000119": KnownCard(
        "visa",
        "processing_error",
        error_code="processing_error",
        message="An error occurred while processing your card. Try again in a little bit.",
    ),
}


@dataclass(frozen=True)
class CardInput:
    """What the payer typed. `None` expiry/cvc (JSON control API) means "a valid one"."""

    number: str
    expiry: str | None = None
    cvc: str | None = None


@dataclass(frozen=True)
class PaymentResult:
    session: dict[str, Any]
    payment_intent: dict[str, Any]
    charge: dict[str, Any]
    redirect_url: str | None


def is_email(value: str) -> bool:
    return bool(_EMAIL.match(value))


def is_web_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class StripeSandbox:
    """All sandbox behaviour over one `Store`; every public method is atomic under its lock.

    New events are handed to `on_event` (the webhook dispatcher) once the lock is released.
    """

    def __init__(
        self,
        fixtures: Fixtures,
        *,
        public_url: str,
        webhook_url: str | None,
        api_version: str = API_VERSION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fixtures = fixtures
        self.public_url = public_url.rstrip("/")
        self.api_version = api_version
        self.on_event: Callable[[str], None] | None = None
        self._webhook_url = webhook_url
        self._clock = clock
        self._store = Store()
        self._depth = 0
        self._outbox: list[str] = []

    # -- plumbing ---------------------------------------------------------------------

    def now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """Hold the store lock; announce the events created inside once it is released."""
        ready: list[str] = []
        try:
            with self._store.lock:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                    if self._depth == 0:
                        ready, self._outbox = self._outbox, []
        finally:
            # Also after an error: events emitted before it (a lazy expiry) did happen.
            if self.on_event is not None:
                for event_id in ready:
                    self.on_event(event_id)

    def _emit(self, event_type: str, obj: dict[str, Any], ctx: RequestContext | None) -> None:
        ctx = ctx or RequestContext()
        event = objects.event(
            self.fixtures,
            event_type=event_type,
            created=self.now(),
            obj=copy.deepcopy(obj),
            api_version=self.api_version,
            pending_webhooks=1 if self._webhook_url else 0,
            request_id=ctx.request_id,
            idempotency_key=ctx.idempotency_key,
        )
        # Stripe sends pretty-printed JSON; the exact bytes matter for the signature.
        payload = json.dumps(event, indent=2)
        record = EventRecord(event=event, payload=payload, seq=self._store.next_seq())
        self._store.events[event["id"]] = record
        self._outbox.append(event["id"])
        logger.info("event %s %s", event["id"], event_type)

    @property
    def webhook_url(self) -> str | None:
        return self._webhook_url

    def set_webhook_url(self, url: str | None) -> None:
        if url is not None and not is_web_url(url):
            raise parameter_invalid("Not a valid URL", "url", code="url_invalid")
        with self._store.lock:
            self._webhook_url = url

    # -- idempotency ------------------------------------------------------------------

    def idempotency_begin(
        self, key: str, fingerprint: tuple[str, str, str]
    ) -> tuple[int, bytes, str] | None:
        """Claim `key`, or return the response saved under it (to replay verbatim)."""
        with self._store.lock:
            entry = self._store.idempotency.get(key)
            if entry is None:
                self._store.idempotency[key] = IdempotentEntry(fingerprint=fingerprint)
                return None
            if entry.fingerprint != fingerprint:
                raise StripeError(
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                    type="idempotency_error",
                )
            if entry.response is None:
                raise StripeError(
                    "There is currently another in-progress request using this Idempotent "
                    "Key (that probably means you submitted twice, and the other request is "
                    "still going through). Please retry this request later.",
                    status=409,
                    type="idempotency_error",
                )
            return entry.response

    def idempotency_finish(self, key: str, response: tuple[int, bytes, str]) -> None:
        with self._store.lock:
            self._store.idempotency[key].response = response

    def idempotency_abort(self, key: str) -> None:
        with self._store.lock:
            self._store.idempotency.pop(key, None)

    # -- Checkout Sessions ------------------------------------------------------------

    def create_checkout_session(self, params: Params, ctx: RequestContext) -> dict[str, Any]:
        reject_unknown(params, SESSION_CREATE_PARAMS)
        mode = get_enum(params, "mode", "mode", ("payment", "setup", "subscription"), required=True)
        if mode != "payment":
            raise parameter_invalid("The sandbox supports only `mode=payment`.", "mode")
        ui_mode = get_enum(
            params, "ui_mode", "ui_mode", ("elements", "embedded_page", "form", "hosted_page")
        )
        if ui_mode not in (None, "hosted_page"):
            raise parameter_invalid("The sandbox supports only `ui_mode=hosted_page`.", "ui_mode")
        if params.get("customer"):
            raise resource_missing("customer", str(params["customer"]), param="customer")
        success_url = self._url_param(params, "success_url")
        cancel_url = self._url_param(params, "cancel_url")
        customer_email = get_str(params, "customer_email", "customer_email")
        if customer_email is not None and not is_email(customer_email):
            raise parameter_invalid(
                f"Invalid email address: {customer_email}", "customer_email", code="email_invalid"
            )
        client_reference_id = get_str(params, "client_reference_id", "client_reference_id")
        if client_reference_id is not None and len(client_reference_id) > 200:
            raise parameter_invalid(
                "client_reference_id can be at most 200 characters.", "client_reference_id"
            )
        metadata = get_metadata(params)
        intent_data = self._payment_intent_data(params)
        created = self.now()
        line_items = self._line_items(params, created)
        currency = line_items[0]["currency"]
        requested_currency = get_str(params, "currency", "currency")
        if requested_currency is not None and requested_currency.lower() != currency:
            raise parameter_invalid(
                "`currency` must match the currency of the line items.", "currency"
            )
        amount_total = sum(item["amount_total"] for item in line_items)
        minimum = MINIMUM_AMOUNT.get(currency, 1)
        if amount_total < minimum:
            raise parameter_invalid(
                "The Checkout Session's total amount due must add up to at least "
                f"{minimum} ({currency}, smallest unit).",
                "line_items",
                code="amount_too_small",
            )
        if amount_total > MAX_AMOUNT:
            raise parameter_invalid(
                f"The Checkout Session's total amount due must be no more than {MAX_AMOUNT}.",
                "line_items",
                code="amount_too_large",
            )
        expires_at = get_int(params, "expires_at", "expires_at")
        if expires_at is None:
            expires_at = created + SESSION_DEFAULT_TTL
        elif expires_at - created > SESSION_DEFAULT_TTL:
            raise parameter_invalid(
                "The `expires_at` timestamp must be less than 24 hours from Checkout Session "
                "creation.",
                "expires_at",
            )
        elif expires_at - created < SESSION_MIN_TTL - SESSION_TTL_SLACK:
            raise parameter_invalid(
                "The `expires_at` timestamp must be at least 30 minutes from Checkout Session "
                "creation.",
                "expires_at",
            )
        after_expiration = self._after_expiration(params)
        consent_collection = self._consent_collection(params)
        expand = get_expand(params)
        session_id = new_id("cs_test_", 58)
        session = objects.checkout_session(
            self.fixtures,
            session_id=session_id,
            created=created,
            expires_at=expires_at,
            currency=currency,
            amount_total=amount_total,
            customer_email=customer_email,
            client_reference_id=client_reference_id,
            metadata=metadata,
            success_url=success_url,
            cancel_url=cancel_url,
            url=f"{self.public_url}/c/pay/{session_id}",
            locale=get_str(params, "locale", "locale"),
            submit_type=get_str(params, "submit_type", "submit_type"),
            billing_address_collection=get_str(
                params, "billing_address_collection", "billing_address_collection"
            ),
        )
        session.update(after_expiration=after_expiration, consent_collection=consent_collection)
        with self._atomic():
            self._store.sessions[session_id] = SessionRecord(
                session=session,
                line_items=line_items,
                payment_intent_data=intent_data,
                seq=self._store.next_seq(),
            )
            logger.info("checkout session %s created (%s %s)", session_id, amount_total, currency)
            return self._expand(copy.deepcopy(session), expand)

    def _after_expiration(self, params: Params) -> dict[str, Any] | None:
        """`after_expiration.recovery`: Stripe's shape, its URL made when the Session expires."""
        data = get_hash(params, "after_expiration", "after_expiration")
        if not data:
            return None
        reject_unknown(data, {"recovery"}, "after_expiration")
        recovery = get_hash(data, "recovery", "after_expiration[recovery]")
        reject_unknown(recovery, {"enabled", "allow_promotion_codes"}, "after_expiration[recovery]")
        enabled = get_bool(recovery, "enabled", "after_expiration[recovery][enabled]")
        if enabled is None:
            raise parameter_missing("after_expiration[recovery][enabled]")
        promo = get_bool(
            recovery, "allow_promotion_codes", "after_expiration[recovery][allow_promotion_codes]"
        )
        return {
            "recovery": {
                "allow_promotion_codes": bool(promo),
                "enabled": enabled,
                "expires_at": None,
                "url": None,
            }
        }

    def _consent_collection(self, params: Params) -> dict[str, Any] | None:
        data = get_hash(params, "consent_collection", "consent_collection")
        if not data:
            return None
        reject_unknown(
            data,
            {"payment_method_reuse_agreement", "promotions", "terms_of_service"},
            "consent_collection",
        )
        promotions = get_enum(
            data, "promotions", "consent_collection[promotions]", ("auto", "none")
        )
        terms = get_enum(
            data, "terms_of_service", "consent_collection[terms_of_service]", ("none", "required")
        )
        reuse = get_hash(
            data,
            "payment_method_reuse_agreement",
            "consent_collection[payment_method_reuse_agreement]",
        )
        return {
            "payment_method_reuse_agreement": (
                {"position": reuse.get("position", "auto")} if reuse else None
            ),
            "promotions": promotions or "none",
            "terms_of_service": terms or "none",
        }

    def record_consent(self, session_id: str, promotions: str) -> dict[str, Any]:
        """The payer ticked (or not) the promotions box on the page, paying or not."""
        with self._atomic():
            self._expire_due()
            record = self._session_record(session_id)
            session = record.session
            if (session.get("consent_collection") or {}).get("promotions") != "auto":
                raise StripeError(
                    "This Checkout Session does not collect promotions consent.",
                    code="parameter_invalid_empty",
                )
            if session["status"] != "open":
                raise SessionNotPayable(session_id, session["status"])
            session["consent"] = {"promotions": promotions, "terms_of_service": None}
            return copy.deepcopy(session)

    def recover_session(self, token: str) -> dict[str, Any]:
        """A recovery link followed: a new open Session like the expired one, carrying
        `recovered_from` (Stripe makes a new Session each time the link is used)."""
        with self._atomic():
            self._expire_due()
            now = self.now()
            for record in list(self._store.sessions.values()):
                recovery = ((record.session.get("after_expiration") or {}).get("recovery")) or {}
                url = recovery.get("url") or ""
                if not url.endswith(f"/c/recover/{token}"):
                    continue
                if (recovery.get("expires_at") or 0) <= now:
                    raise SessionNotPayable(record.session["id"], "recovery_expired")
                old = record.session
                session_id = new_id("cs_test_", 58)
                session = copy.deepcopy(old)
                session.update(
                    id=session_id,
                    created=now,
                    expires_at=now + SESSION_DEFAULT_TTL,
                    status="open",
                    payment_status="unpaid",
                    url=f"{self.public_url}/c/pay/{session_id}",
                    recovered_from=old["id"],
                    after_expiration=None,
                    consent=None,
                    payment_intent=None,
                    customer_details=None,
                )
                self._store.sessions[session_id] = SessionRecord(
                    session=session,
                    line_items=copy.deepcopy(record.line_items),
                    payment_intent_data=copy.deepcopy(record.payment_intent_data),
                    seq=self._store.next_seq(),
                )
                logger.info("checkout session %s recovered from %s", session_id, old["id"])
                return copy.deepcopy(session)
        raise resource_missing("checkout.session", token)

    def _url_param(self, params: Params, key: str) -> str | None:
        value = get_str(params, key, key)
        if value is not None and (len(value) > 5000 or not is_web_url(value)):
            raise parameter_invalid("Not a valid URL", key, code="url_invalid")
        return value

    def _payment_intent_data(self, params: Params) -> dict[str, Any]:
        data = get_hash(params, "payment_intent_data", "payment_intent_data")
        reject_unknown(data, PAYMENT_INTENT_DATA_PARAMS, "payment_intent_data")
        capture = get_enum(
            data,
            "capture_method",
            "payment_intent_data[capture_method]",
            ("automatic", "automatic_async", "manual"),
        )
        if capture == "manual":
            raise parameter_invalid(
                "The sandbox does not support manual capture.",
                "payment_intent_data[capture_method]",
            )
        receipt_email = get_str(data, "receipt_email", "payment_intent_data[receipt_email]")
        if receipt_email is not None and not is_email(receipt_email):
            raise parameter_invalid(
                f"Invalid email address: {receipt_email}",
                "payment_intent_data[receipt_email]",
                code="email_invalid",
            )
        return {
            "metadata": get_metadata(data, "metadata", "payment_intent_data"),
            "description": get_str(data, "description", "payment_intent_data[description]"),
            "receipt_email": receipt_email,
            "statement_descriptor": get_str(
                data, "statement_descriptor", "payment_intent_data[statement_descriptor]"
            ),
            "statement_descriptor_suffix": get_str(
                data,
                "statement_descriptor_suffix",
                "payment_intent_data[statement_descriptor_suffix]",
            ),
        }

    def _line_items(self, params: Params, created: int) -> list[dict[str, Any]]:
        raw_items = get_list(params, "line_items", "line_items")
        if not raw_items:
            raise parameter_missing("line_items")
        items: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_items):
            name = path_name("line_items", index)
            if not isinstance(raw, dict):
                raise parameter_invalid(f"Invalid hash: {name} must be a hash", name)
            reject_unknown(raw, LINE_ITEM_PARAMS, name)
            if raw.get("price"):
                raise resource_missing("price", str(raw["price"]), param=f"{name}[price]")
            price_data = get_hash(raw, "price_data", f"{name}[price_data]")
            if not price_data:
                raise parameter_missing(f"{name}[price_data]")
            pd_name = f"{name}[price_data]"
            reject_unknown(price_data, PRICE_DATA_PARAMS, pd_name)
            currency = (
                get_str(price_data, "currency", f"{pd_name}[currency]", required=True) or ""
            ).lower()
            if not _CURRENCY.match(currency):
                raise parameter_invalid(f"Invalid currency: {currency}", f"{pd_name}[currency]")
            if price_data.get("recurring"):
                raise parameter_invalid(
                    "You specified `payment` mode but passed a recurring price. Either switch "
                    "to `subscription` mode or use only one-time prices.",
                    f"{pd_name}[recurring]",
                )
            unit_amount = get_int(price_data, "unit_amount", f"{pd_name}[unit_amount]", minimum=0)
            if unit_amount is None:
                decimal = get_str(
                    price_data, "unit_amount_decimal", f"{pd_name}[unit_amount_decimal]"
                )
                if decimal is None:
                    raise parameter_missing(f"{pd_name}[unit_amount]")
                try:
                    unit_amount = int(decimal)
                except ValueError:
                    raise parameter_invalid(
                        "The sandbox supports only whole-number unit_amount_decimal.",
                        f"{pd_name}[unit_amount_decimal]",
                    ) from None
            if price_data.get("product"):
                raise resource_missing(
                    "product", str(price_data["product"]), param=f"{pd_name}[product]"
                )
            product_data = get_hash(price_data, "product_data", f"{pd_name}[product_data]")
            if not product_data:
                raise parameter_missing(f"{pd_name}[product_data]")
            reject_unknown(product_data, PRODUCT_DATA_PARAMS, f"{pd_name}[product_data]")
            product_name = get_str(
                product_data, "name", f"{pd_name}[product_data][name]", required=True
            )
            quantity = get_int(
                raw, "quantity", f"{name}[quantity]", required=True, minimum=1, maximum=999_999
            )
            if items and currency != items[0]["currency"]:
                raise parameter_invalid(
                    "All line items must use the same currency.", f"{pd_name}[currency]"
                )
            items.append(
                objects.line_item(
                    self.fixtures,
                    created=created,
                    currency=currency,
                    unit_amount=unit_amount,
                    quantity=quantity or 1,
                    name=product_name or "",
                    description=get_str(
                        product_data, "description", f"{pd_name}[product_data][description]"
                    ),
                )
            )
        return items

    def _session_record(self, session_id: str) -> SessionRecord:
        record = self._store.sessions.get(session_id)
        if record is None:
            raise resource_missing("checkout.session", session_id)
        return record

    def _expire_due(self) -> None:
        """Stripe expires open Sessions on its own; the sandbox does it whenever state is read."""
        now = self.now()
        for record in self._store.sessions.values():
            session = record.session
            if session["status"] == "open" and session["expires_at"] <= now:
                self._expire(record, None)

    def expire_due_sessions(self) -> None:
        with self._atomic():
            self._expire_due()

    def _expire(self, record: SessionRecord, ctx: RequestContext | None) -> None:
        record.session.update(status="expired", url=None)
        recovery = (record.session.get("after_expiration") or {}).get("recovery")
        if recovery and recovery.get("enabled"):
            # Valid 30 days, as Stripe's; following it makes a new Session (recover_session).
            recovery.update(
                expires_at=self.now() + RECOVERY_TTL,
                url=f"{self.public_url}/c/recover/{new_id('', 40)}",
            )
        logger.info("checkout session %s expired", record.session["id"])
        self._emit("checkout.session.expired", record.session, ctx)

    def retrieve_checkout_session(self, session_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, {"expand"})
        with self._atomic():
            self._expire_due()
            session = copy.deepcopy(self._session_record(session_id).session)
            return self._expand(session, get_expand(params))

    def checkout_page(self, session_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The Session and its line items, for the hosted page."""
        with self._atomic():
            self._expire_due()
            record = self._session_record(session_id)
            return copy.deepcopy(record.session), copy.deepcopy(record.line_items)

    def list_checkout_sessions(self, params: Params) -> dict[str, Any]:
        reject_unknown(params, SESSION_LIST_PARAMS)
        filters: dict[str, str | None] = {}
        for key in (
            "payment_intent",
            "customer",
            "payment_link",
            "subscription",
            "customer_account",
        ):
            value = get_str(params, key, key)
            if value is not None:
                filters[key] = value
        status = get_enum(params, "status", "status", ("open", "complete", "expired"))
        if status is not None:
            filters["status"] = status
        details = get_hash(params, "customer_details", "customer_details")
        reject_unknown(details, {"email"}, "customer_details")
        email = get_str(details, "email", "customer_details[email]")
        created = self._created_filter(params)
        with self._atomic():
            self._expire_due()
            records = sorted(self._store.sessions.values(), key=lambda r: r.seq, reverse=True)
            matching = [
                (record.seq, record.session)
                for record in records
                if all(record.session.get(key) == value for key, value in filters.items())
                and created(record.session["created"])
                and (
                    email is None
                    or (record.session["customer_details"] or {}).get("email") == email
                )
            ]
            positions = {record.session["id"]: record.seq for record in records}
            page = self._paginate(
                matching, positions, params, "/v1/checkout/sessions", "checkout.session"
            )
            return self._expand_list(page, get_expand(params))

    def list_line_items(self, session_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, PAGE_PARAMS)
        with self._atomic():
            record = self._session_record(session_id)
            # Line items keep their order; a descending position keeps the cursor logic shared.
            indexed = [(-i, item) for i, item in enumerate(record.line_items)]
            positions = {item["id"]: -i for i, item in enumerate(record.line_items)}
            page = self._paginate(
                indexed, positions, params, f"/v1/checkout/sessions/{session_id}/line_items", "item"
            )
            return self._expand_list(page, get_expand(params))

    def expire_checkout_session(
        self, session_id: str, params: Params, ctx: RequestContext
    ) -> dict[str, Any]:
        reject_unknown(params, {"expand"})
        with self._atomic():
            self._expire_due()
            record = self._session_record(session_id)
            status = record.session["status"]
            if status != "open":
                raise StripeError(
                    'Only Checkout Sessions with a status in ["open"] can be expired. This '
                    f'Checkout Session has a status of "{status}".',
                    code="checkout_session_not_open",
                )
            self._expire(record, ctx)
            return self._expand(copy.deepcopy(record.session), get_expand(params))

    # -- paying (hosted page and control API) -----------------------------------------

    def pay_checkout_session(
        self,
        session_id: str,
        card: CardInput | None,
        *,
        email: str | None,
        name: str | None,
        delayed: bool = False,
    ) -> PaymentResult:
        """Complete a Session as the hosted page does; `delayed` is a bank debit still pending."""
        with self._atomic():
            self._expire_due()
            record = self._session_record(session_id)
            session = record.session
            if session["status"] != "open":
                raise SessionNotPayable(session_id, session["status"])
            # Checkout locks the email field to customer_email when the Session has one.
            payer_email = session["customer_email"] or (email or "").strip()
            if not payer_email:
                raise PayerInputError(
                    "Enter your email address.", param="email", code="parameter_missing"
                )
            if not is_email(payer_email):
                raise PayerInputError(
                    "Your email address is invalid.", param="email", code="email_invalid"
                )
            payer_name = (name or "").strip() or None
            if delayed:
                method_details = objects.bank_account_details()
            else:
                method_details = self._authorize_card(card or CardInput(number=""))
            now = self.now()
            intent_data = record.payment_intent_data
            intent = objects.payment_intent(
                self.fixtures,
                created=now,
                amount=session["amount_total"],
                currency=session["currency"],
                metadata=dict(intent_data["metadata"]),
                description=intent_data["description"],
                receipt_email=intent_data["receipt_email"],
                statement_descriptor=intent_data["statement_descriptor"],
                statement_descriptor_suffix=intent_data["statement_descriptor_suffix"],
                payment_method_type=method_details["type"],
            )
            charge = objects.charge(
                self.fixtures,
                created=now,
                intent=intent,
                email=payer_email,
                name=payer_name,
                method_details=method_details,
                receipt_url=f"{self.public_url}/receipts/{{charge_id}}",
                status="pending" if delayed else "succeeded",
            )
            intent["latest_charge"] = charge["id"]
            if not delayed:
                intent.update(status="succeeded", amount_received=intent["amount"])
            self._store.payment_intents[intent["id"]] = intent
            self._store.charges[charge["id"]] = charge
            session.update(
                status="complete",
                payment_status="unpaid" if delayed else "paid",
                payment_intent=intent["id"],
                customer_details=objects.customer_details(payer_email, payer_name),
                url=None,
            )
            logger.info("checkout session %s paid (%s)", session_id, intent["status"])
            self._emit("checkout.session.completed", session, None)
            if not delayed:
                self._emit("payment_intent.succeeded", intent, None)
            success_url = session["success_url"]
            redirect = (
                success_url.replace("{CHECKOUT_SESSION_ID}", session_id) if success_url else None
            )
            return PaymentResult(
                session=copy.deepcopy(session),
                payment_intent=copy.deepcopy(intent),
                charge=copy.deepcopy(charge),
                redirect_url=redirect,
            )

    def _authorize_card(self, card: CardInput) -> dict[str, Any]:
        number = re.sub(r"[\s-]", "", card.number)
        if not number:
            raise CardDeclined("Your card number is incomplete.", code="incomplete_number")
        test_card = TEST_CARDS.get(number)
        if test_card is None:
            raise CardDeclined("Your card number is invalid.", code="invalid_number")
        exp_month, exp_year = self._check_expiry(card.expiry)
        if card.cvc is not None:
            cvc_length = 4 if test_card.brand == "amex" else 3
            if not (card.cvc.strip().isdigit() and len(card.cvc.strip()) == cvc_length):
                raise PayerInputError(
                    "Your card's security code is incomplete.",
                    param="card_cvc",
                    code="incomplete_cvc",
                )
        if test_card.decline_code:
            raise CardDeclined(
                test_card.message, code=test_card.error_code, decline_code=test_card.decline_code
            )
        return objects.card_details(test_card.brand, number[-4:], exp_month, exp_year)

    def _check_expiry(self, expiry: str | None) -> tuple[int, int]:
        today = time.gmtime(self.now())
        if expiry is None:
            return 12, today.tm_year + 5
        match = _EXPIRY.match(expiry)
        if not match:
            raise PayerInputError(
                "Your card's expiration date is incomplete.",
                param="card_expiry",
                code="incomplete_expiry",
            )
        month, year = int(match.group(1)), int(match.group(2))
        if year < 100:
            year += 2000
        if not 1 <= month <= 12:
            raise PayerInputError(
                "Your card's expiration date is invalid.",
                param="card_expiry",
                code="invalid_expiry_month",
            )
        if (year, month) < (today.tm_year, today.tm_mon):
            raise PayerInputError(
                "Your card's expiration date is in the past.",
                param="card_expiry",
                code="invalid_expiry_year_past",
            )
        return month, year

    def settle_delayed_payment(self, session_id: str, *, succeeded: bool) -> PaymentResult:
        """The bank's answer for a delayed payment: the async_payment_* events."""
        with self._atomic():
            record = self._session_record(session_id)
            session = record.session
            intent = self._store.payment_intents.get(session["payment_intent"] or "")
            if (
                session["status"] != "complete"
                or intent is None
                or intent["status"] != "processing"
            ):
                raise StripeError(
                    f"Checkout Session {session_id} has no delayed payment waiting for a result.",
                    status=409,
                    code="payment_not_pending",
                )
            charge = self._store.charges[intent["latest_charge"]]
            if succeeded:
                intent.update(status="succeeded", amount_received=intent["amount"])
                charge.update(
                    status="succeeded",
                    paid=True,
                    captured=True,
                    amount_captured=charge["amount"],
                    balance_transaction=new_id("txn_"),
                )
                session["payment_status"] = "paid"
                self._emit("checkout.session.async_payment_succeeded", session, None)
                self._emit("payment_intent.succeeded", intent, None)
            else:
                failure = "The customer's bank account has insufficient funds."
                intent.update(
                    status="requires_payment_method",
                    last_payment_error={
                        "type": "invalid_request_error",
                        "code": "insufficient_funds",
                        "message": failure,
                        "payment_method": None,
                    },
                )
                charge.update(
                    status="failed",
                    failure_code="insufficient_funds",
                    failure_message=failure,
                )
                self._emit("checkout.session.async_payment_failed", session, None)
                self._emit("payment_intent.payment_failed", intent, None)
            logger.info(
                "delayed payment for %s %s", session_id, "succeeded" if succeeded else "failed"
            )
            return PaymentResult(
                session=copy.deepcopy(session),
                payment_intent=copy.deepcopy(intent),
                charge=copy.deepcopy(charge),
                redirect_url=None,
            )

    # -- PaymentIntents, Charges, Refunds, Disputes -----------------------------------

    def retrieve_payment_intent(self, intent_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, {"expand", "client_secret"})
        with self._atomic():
            intent = self._store.payment_intents.get(intent_id)
            if intent is None:
                raise resource_missing("payment_intent", intent_id, param="intent")
            return self._expand(copy.deepcopy(intent), get_expand(params))

    def retrieve_charge(self, charge_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, {"expand"})
        with self._atomic():
            charge = self._store.charges.get(charge_id)
            if charge is None:
                raise resource_missing("charge", charge_id, param="charge")
            return self._expand(copy.deepcopy(charge), get_expand(params))

    def create_refund(self, params: Params, ctx: RequestContext) -> dict[str, Any]:
        reject_unknown(params, REFUND_CREATE_PARAMS)
        charge_id = get_str(params, "charge", "charge")
        intent_id = get_str(params, "payment_intent", "payment_intent")
        amount = get_int(params, "amount", "amount", minimum=1)
        reason = get_enum(
            params, "reason", "reason", ("duplicate", "fraudulent", "requested_by_customer")
        )
        metadata = get_metadata(params)
        if charge_id is None and intent_id is None:
            raise parameter_missing("charge")
        with self._atomic():
            if intent_id is not None:
                intent = self._store.payment_intents.get(intent_id)
                if intent is None:
                    raise resource_missing("payment_intent", intent_id, param="payment_intent")
                if intent["status"] != "succeeded" or not intent["latest_charge"]:
                    raise StripeError(
                        f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                        "refund.",
                        code="charge_not_refundable",
                        param="payment_intent",
                    )
                if charge_id is not None and charge_id != intent["latest_charge"]:
                    raise parameter_invalid(
                        "The charge does not belong to this PaymentIntent.", "charge"
                    )
                charge_id = intent["latest_charge"]
            charge = self._store.charges.get(charge_id or "")
            if charge is None:
                raise resource_missing("charge", charge_id or "", param="charge")
            if charge["status"] != "succeeded":
                raise StripeError(
                    f"Charge {charge['id']} has not succeeded and cannot be refunded.",
                    code="charge_not_refundable",
                    param="charge",
                )
            remaining = charge["amount"] - charge["amount_refunded"]
            if remaining <= 0:
                raise StripeError(
                    f"Charge {charge['id']} has already been refunded.",
                    code="charge_already_refunded",
                    param="charge",
                )
            if amount is None:
                amount = remaining
            if amount > remaining:
                raise StripeError(
                    f"Refund amount ({amount} {charge['currency']}) is greater than unrefunded "
                    f"amount on charge ({remaining} {charge['currency']})",
                    code="amount_too_large",
                    param="amount",
                )
            refund = objects.refund(
                self.fixtures,
                created=self.now(),
                charge_obj=charge,
                amount=amount,
                reason=reason,
                metadata=metadata,
            )
            self._store.refunds[refund["id"]] = refund
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            if isinstance(charge.get("refunds"), dict):
                charge["refunds"]["data"].insert(0, copy.deepcopy(refund))
            logger.info("refund %s of %s on %s", refund["id"], amount, charge["id"])
            self._emit("charge.refunded", charge, ctx)
            return self._expand(copy.deepcopy(refund), get_expand(params))

    def retrieve_refund(self, refund_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, {"expand"})
        with self._atomic():
            refund = self._store.refunds.get(refund_id)
            if refund is None:
                raise resource_missing("refund", refund_id, param="refund")
            return self._expand(copy.deepcopy(refund), get_expand(params))

    def retrieve_dispute(self, dispute_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, {"expand"})
        with self._atomic():
            dispute = self._store.disputes.get(dispute_id)
            if dispute is None:
                raise resource_missing("dispute", dispute_id, param="dispute")
            return self._expand(copy.deepcopy(dispute), get_expand(params))

    def create_dispute(
        self, charge_id: str, *, reason: str = "fraudulent", amount: int | None = None
    ) -> dict[str, Any]:
        with self._atomic():
            charge = self._store.charges.get(charge_id)
            if charge is None:
                raise resource_missing("charge", charge_id, param="charge")
            if charge["status"] != "succeeded":
                raise StripeError(f"Charge {charge_id} has not succeeded; nothing to dispute.")
            if charge["disputed"]:
                raise StripeError(f"Charge {charge_id} is already disputed.", status=409)
            if amount is not None and not 0 < amount <= charge["amount"]:
                raise parameter_invalid("amount must be between 1 and the charge amount.", "amount")
            now = self.now()
            dispute = objects.dispute(
                self.fixtures,
                created=now,
                charge_obj=charge,
                amount=amount or charge["amount"],
                reason=reason,
                due_by=now + DISPUTE_RESPONSE_WINDOW,
            )
            self._store.disputes[dispute["id"]] = dispute
            charge["disputed"] = True
            self._emit("charge.dispute.created", dispute, None)
            return copy.deepcopy(dispute)

    def close_dispute(self, dispute_id: str, *, status: str) -> dict[str, Any]:
        if status not in ("won", "lost"):
            raise parameter_invalid("status must be one of won, lost", "status")
        with self._atomic():
            dispute = self._store.disputes.get(dispute_id)
            if dispute is None:
                raise resource_missing("dispute", dispute_id, param="dispute")
            if dispute["status"] in ("won", "lost"):
                raise StripeError(f"Dispute {dispute_id} is already closed.", status=409)
            dispute["status"] = status
            dispute["evidence_details"].update(
                has_evidence=True, submission_count=1, submission_method="manual"
            )
            self._emit("charge.dispute.closed", dispute, None)
            return copy.deepcopy(dispute)

    # -- Events and deliveries -----------------------------------------------------------

    def retrieve_event(self, event_id: str, params: Params) -> dict[str, Any]:
        reject_unknown(params, {"expand"})
        with self._atomic():
            record = self._store.events.get(event_id)
            if record is None:
                raise resource_missing("event", event_id)
            return copy.deepcopy(record.event)

    def list_events(self, params: Params) -> dict[str, Any]:
        reject_unknown(params, EVENT_LIST_PARAMS)
        event_type = get_str(params, "type", "type")
        types = set(get_list(params, "types", "types"))
        if event_type is not None and types:
            raise StripeError("You may pass either `type` or `types`, but not both.", param="types")
        if event_type is not None:
            types = {event_type}
        delivered = get_str(params, "delivery_success", "delivery_success")
        created = self._created_filter(params)
        with self._atomic():
            records = sorted(self._store.events.values(), key=lambda r: r.seq, reverse=True)
            matching = [
                (record.seq, record.event)
                for record in records
                if (not types or _type_matches(record.event["type"], types))
                and created(record.event["created"])
                and (delivered is None or (record.status == "delivered") == (delivered == "true"))
            ]
            positions = {record.event["id"]: record.seq for record in records}
            return copy.deepcopy(self._paginate(matching, positions, params, "/v1/events", "event"))

    def event_records(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Every event with its delivery log, oldest first (control API)."""
        with self._atomic():
            records = sorted(self._store.events.values(), key=lambda r: r.seq)
            return [
                copy.deepcopy(record.to_dict())
                for record in records
                if event_type is None or record.event["type"] == event_type
            ]

    def event_record(self, event_id: str) -> dict[str, Any]:
        with self._atomic():
            record = self._store.events.get(event_id)
            if record is None:
                raise resource_missing("event", event_id)
            return copy.deepcopy(record.to_dict())

    def event_payload(self, event_id: str) -> str:
        with self._atomic():
            record = self._store.events.get(event_id)
            if record is None:
                raise resource_missing("event", event_id)
            return record.payload

    def record_attempt(self, event_id: str, attempt: DeliveryAttempt) -> None:
        with self._atomic():
            self._store.events[event_id].attempts.append(attempt)

    def next_attempt_number(self, event_id: str) -> int:
        with self._atomic():
            return len(self._store.events[event_id].attempts) + 1

    def set_delivery_status(self, event_id: str, status: DeliveryStatus) -> None:
        with self._atomic():
            record = self._store.events[event_id]
            record.status = status
            if status in ("delivered", "failed"):
                record.event["pending_webhooks"] = 0

    # -- lists and expansion -------------------------------------------------------------

    def _created_filter(self, params: Params) -> Callable[[int], bool]:
        raw = params.get("created")
        if raw is None or raw == "":
            return lambda _created: True
        if isinstance(raw, str):
            exact = get_int(params, "created", "created")
            return lambda created: created == exact
        if not isinstance(raw, dict):
            raise parameter_invalid("Invalid created filter", "created")
        reject_unknown(raw, {"gt", "gte", "lt", "lte"}, "created")
        bounds = {op: get_int(raw, op, f"created[{op}]") for op in ("gt", "gte", "lt", "lte")}

        def matches(created: int) -> bool:
            gt, gte, lt, lte = bounds["gt"], bounds["gte"], bounds["lt"], bounds["lte"]
            return (
                (gt is None or created > gt)
                and (gte is None or created >= gte)
                and (lt is None or created < lt)
                and (lte is None or created <= lte)
            )

        return matches

    def _paginate(
        self,
        items: list[tuple[int, dict[str, Any]]],
        positions: Mapping[str, int],
        params: Params,
        url: str,
        resource: str,
    ) -> dict[str, Any]:
        """Stripe's cursor pagination over items ordered by descending position."""
        limit = get_int(params, "limit", "limit", minimum=1, maximum=100) or 10
        starting_after = get_str(params, "starting_after", "starting_after")
        ending_before = get_str(params, "ending_before", "ending_before")
        if starting_after is not None and ending_before is not None:
            raise StripeError(
                "You may only specify one of these parameters: ending_before, starting_after."
            )
        if starting_after is not None:
            if starting_after not in positions:
                raise resource_missing(resource, starting_after, param="starting_after")
            cursor = positions[starting_after]
            window = [obj for position, obj in items if position < cursor]
            page, has_more = window[:limit], len(window) > limit
        elif ending_before is not None:
            if ending_before not in positions:
                raise resource_missing(resource, ending_before, param="ending_before")
            cursor = positions[ending_before]
            window = [obj for position, obj in items if position > cursor]
            page, has_more = window[-limit:], len(window) > limit
        else:
            window = [obj for _position, obj in items]
            page, has_more = window[:limit], len(window) > limit
        return objects.list_object(copy.deepcopy(page), url, has_more=has_more)

    def _expand_list(self, page: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
        for path in paths:
            head, _, rest = path.partition(".")
            if head != "data" or not rest:
                raise StripeError(
                    f"This property cannot be expanded ({path}). Expansions on lists start "
                    "with `data.`.",
                    param="expand",
                )
            for obj in page["data"]:
                self._expand_path(obj, rest.split("."), path)
        return page

    def _expand(self, obj: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
        for path in paths:
            self._expand_path(obj, path.split("."), path)
        return obj

    def _expand_path(self, obj: dict[str, Any], parts: list[str], full: str) -> None:
        field, rest = parts[0], parts[1:]
        current = obj.get(field)
        if isinstance(current, dict) and field != "line_items":
            value: dict[str, Any] | None = current
        else:
            value = self._expanded(obj, field, full)
            obj[field] = value
        if rest and value is not None:
            self._expand_path(value, rest, full)

    def _expanded(self, obj: dict[str, Any], field: str, full: str) -> dict[str, Any] | None:
        kind = obj.get("object")
        if kind == "checkout.session" and field == "line_items":
            items = self._store.sessions[obj["id"]].line_items
            return objects.list_object(
                copy.deepcopy(items[:10]),
                f"/v1/checkout/sessions/{obj['id']}/line_items",
                has_more=len(items) > 10,
            )
        lookups: dict[tuple[Any, str], dict[str, dict[str, Any]]] = {
            ("checkout.session", "payment_intent"): self._store.payment_intents,
            ("payment_intent", "latest_charge"): self._store.charges,
            ("charge", "payment_intent"): self._store.payment_intents,
            ("refund", "charge"): self._store.charges,
            ("refund", "payment_intent"): self._store.payment_intents,
            ("dispute", "charge"): self._store.charges,
            ("dispute", "payment_intent"): self._store.payment_intents,
        }
        table = lookups.get((kind, field))
        if table is None:
            raise StripeError(f"This property cannot be expanded ({full}).", param="expand")
        object_id = obj.get(field)
        if object_id is None:
            return None
        return copy.deepcopy(table[object_id])


def _type_matches(event_type: str, patterns: set[str]) -> bool:
    """Stripe's `type` filter accepts `*` wildcards such as `checkout.session.*`."""
    for pattern in patterns:
        if pattern == event_type:
            return True
        if pattern.endswith("*") and event_type.startswith(pattern[:-1]):
            return True
    return False
