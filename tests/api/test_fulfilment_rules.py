"""The fulfilment check's rules, one case per way a paid Session can differ from our sale.
Sessions start from Stripe's published example object (shared/stripe/fixtures3.json)."""

from typing import Any

import pytest

from core.contracts import ACCESS_ENDED_STATUSES, EnrollmentStatus
from core.models import Enrollment, utcnow
from core.payments.fulfilment import Verdict, judge, key_livemode
from core.settings import Settings
from tests.utils.helpers import stripe_fixture

SETTINGS = Settings(_env_file=None, app_env="test")  # type: ignore[call-arg]
LIVE = Settings(_env_file=None, app_env="test", stripe_secret_key="sk_live_x")  # type: ignore[call-arg]


def our_row(track: str = "DP", **fields: Any) -> Enrollment:
    values: dict[str, Any] = {"status": EnrollmentStatus.CHECKOUT_CREATED, **fields}
    return Enrollment(
        checkout_session_id="cs_test_ours1234",
        workflow_id="enrollment-cs_test_ours1234",
        email="Ada@Example.com",
        name="Ada",
        track=track,
        **values,
    )


def sold(amount: int = 49_900, currency: str = "usd", **overrides: Any) -> dict[str, Any]:
    """Stripe's copy of a paid Session for a DP sale, line items expanded."""
    session = stripe_fixture("checkout.session")
    item = {
        "id": "li_1",
        "object": "item",
        "amount_subtotal": amount,
        "amount_total": amount,
        "currency": currency,
        "quantity": 1,
    }
    session.update(
        id="cs_test_ours1234",
        mode="payment",
        status="complete",
        payment_status="paid",
        livemode=False,
        amount_total=amount,
        currency=currency,
        payment_intent="pi_123",
        metadata={"email": "x@example.com", "track": "DP", "anonymous_checkout": "true"},
        line_items={"object": "list", "data": [item], "has_more": False},
    )
    session.update(overrides)
    return session


def test_our_paid_sale_is_fulfilled_from_our_row_not_the_metadata() -> None:
    decision = judge(sold(), our_row(), SETTINGS)
    assert decision.verdict == Verdict.FULFIL and decision.may_start
    assert decision.inp is not None
    # Who was sold what comes from the row our checkout wrote, not from metadata.
    assert (decision.inp.email, decision.inp.track) == ("ada@example.com", "DP")
    assert (decision.inp.amount, decision.inp.payment_intent_id) == (49_900, "pi_123")


def test_a_recorded_payment_is_never_fulfilled_twice() -> None:
    decision = judge(sold(), our_row(paid_at=utcnow()), SETTINGS)
    assert decision.verdict == Verdict.FULFILLED and not decision.may_start


def one_item(**changes: Any) -> dict[str, Any]:
    session = sold()
    session["line_items"]["data"][0].update(changes)
    return session


@pytest.mark.parametrize(
    ("session", "reason"),
    [
        (sold(amount=100), "amount_total 100"),
        (sold(currency="eur"), "currency 'eur'"),
        (sold(mode="subscription"), "mode 'subscription'"),
        (sold(metadata={"track": "FSD", "anonymous_checkout": "true"}), "metadata track 'FSD'"),
        (sold(line_items=None), "line items missing"),
        (sold(line_items={"object": "list", "data": [], "has_more": False}), "0 line items"),
        (one_item(quantity=2), "quantity 2"),
        (one_item(amount_total=100), "line item 100"),
        (sold(livemode=True), "livemode"),
    ],
)
def test_each_difference_from_our_sale_is_a_mismatch(session: dict[str, Any], reason: str) -> None:
    decision = judge(session, our_row(), SETTINGS)
    assert decision.verdict == Verdict.MISMATCH and not decision.may_start
    assert reason in decision.reason


def test_the_other_tracks_price_is_a_mismatch() -> None:
    assert judge(sold(), our_row(track="FSD"), SETTINGS).verdict == Verdict.MISMATCH
    fsd = sold(amount=59_900, metadata={"track": "FSD"})
    assert judge(fsd, our_row(track="FSD"), SETTINGS).verdict == Verdict.FULFIL


def test_a_live_key_refuses_test_mode_sessions() -> None:
    assert key_livemode(LIVE) and not key_livemode(SETTINGS)
    assert judge(sold(), our_row(), LIVE).verdict == Verdict.MISMATCH
    assert judge(sold(livemode=True), our_row(), LIVE).verdict == Verdict.FULFIL


def test_without_our_row_it_is_a_mismatch_or_not_ours() -> None:
    assert judge(sold(), None, SETTINGS).verdict == Verdict.MISMATCH
    other_product = sold(metadata={"sku": "t-shirt"})
    assert judge(other_product, None, SETTINGS).verdict == Verdict.NOT_OURS


def test_unpaid_and_expired_sessions_wait() -> None:
    assert judge(sold(payment_status="unpaid"), our_row(), SETTINGS).verdict == Verdict.UNPAID
    expired = sold(status="expired", payment_status="unpaid")
    assert judge(expired, our_row(), SETTINGS).verdict == Verdict.EXPIRED


@pytest.mark.parametrize("status", sorted(ACCESS_ENDED_STATUSES - {"PAYMENT_MISMATCH"}))
def test_ended_access_is_never_given_again_even_when_paid(status: str) -> None:
    decision = judge(sold(), our_row(status=status, paid_at=utcnow()), SETTINGS)
    assert decision.verdict == Verdict.ENDED and not decision.may_start


def test_a_refused_payment_stays_refused() -> None:
    row = our_row(status=EnrollmentStatus.PAYMENT_MISMATCH, attention_reason="amount")
    assert judge(sold(), row, SETTINGS).verdict == Verdict.MISMATCH
