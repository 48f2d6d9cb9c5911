"""Errors in Stripe's wire shape, so the SDK raises the same exception classes as against Stripe."""

from __future__ import annotations

from typing import Any

DOC_URL = "https://stripe.com/docs/error-codes/{code}"


class StripeError(Exception):
    """An API error rendered as `{"error": {...}}` with the HTTP status Stripe uses."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = DOC_URL.format(code=self.code.replace("_", "-"))
        if self.param:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


class CardDeclined(StripeError):
    """A card the test-card table refuses; the hosted page shows `message` to the payer."""

    def __init__(self, message: str, *, code: str, decline_code: str | None = None) -> None:
        extra = {"decline_code": decline_code} if decline_code else {}
        super().__init__(message, status=402, type="card_error", code=code, **extra)


class PayerInputError(StripeError):
    """Something the payer typed on the hosted page is incomplete (not a card decline)."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message, status=400, code=code, param=param)


class SessionNotPayable(StripeError):
    """The Checkout Session is complete or expired, so it can no longer take a payment."""

    def __init__(self, session_id: str, status: str) -> None:
        super().__init__(
            f"Checkout Session {session_id} is {status} and cannot be paid.",
            status=410 if status == "expired" else 409,
            code="checkout_session_not_open",
        )
        self.session_status = status


def resource_missing(resource: str, object_id: str, param: str | None = "id") -> StripeError:
    return StripeError(
        f"No such {resource}: '{object_id}'",
        status=404,
        code="resource_missing",
        param=param,
    )


def parameter_missing(param: str) -> StripeError:
    return StripeError(f"Missing required param: {param}.", code="parameter_missing", param=param)


def parameter_unknown(param: str) -> StripeError:
    return StripeError(
        f"Received unknown parameter: {param}", code="parameter_unknown", param=param
    )


def parameter_invalid(message: str, param: str, code: str | None = None) -> StripeError:
    return StripeError(message, code=code, param=param)
