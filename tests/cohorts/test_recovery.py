"""Abandoned checkouts: an expired Session with the buyer's consent gets one reminder with
Stripe's recovery link (none after a payment since), and a Session made from that link is
fulfilled as the buyer's own enrollment, its seat taken from the cohort."""

import re

import httpx
from sqlmodel import Session, col, select

from core.models import AuditEvent, Enrollment, SeatState, StripeEvent
from tests.cohorts.conftest import (
    CHECKOUT,
    buyer,
    eventually,
    holds_of,
    ledger_consistent,
    make_cohort,
)
from tests.utils.stack import Stack

RECOVERY_LINK = re.compile(r"(http://\S+/c/recover/\S+)")


def reminders(stack: Stack, email: str) -> list[str]:
    return [
        m.text or ""
        for m in stack.mail.messages
        if email in m["To"] and "checkout is waiting" in str(m["Subject"])
    ]


def deliveries(stack: Stack, event_id: str) -> int:
    with Session(stack.engine) as db:
        event = db.get(StripeEvent, event_id)
        return event.deliveries if event else 0


def enrollments(stack: Stack, email: str) -> list[Enrollment]:
    with Session(stack.engine) as db:
        return list(
            db.exec(
                select(Enrollment).where(col(Enrollment.email) == email).order_by(Enrollment.id)
            ).all()
        )


async def test_one_reminder_then_the_recovered_session_is_fulfilled(
    fresh: Stack, sandbox_http: httpx.AsyncClient
) -> None:
    make_cohort(fresh.engine, "DP-R1", size=3)
    async with fresh.http() as http, sandbox_http as sandbox:
        r = await http.post(CHECKOUT, json=buyer("ada@example.com", cohort="DP-R1"))
        sid = r.json()["sessionId"]
        session = (await sandbox.get(f"/v1/checkout/sessions/{sid}")).json()
        assert session["after_expiration"]["recovery"]["enabled"] is True
        assert session["consent_collection"]["promotions"] == "auto"
        consent = await sandbox.post(
            f"/_sandbox/checkout/sessions/{sid}/consent", json={"promotions": "opt_in"}
        )
        assert consent.status_code == 200
        assert (await sandbox.post(f"/v1/checkout/sessions/{sid}/expire")).status_code == 200
        await eventually(lambda: reminders(fresh, "ada@example.com"))
        # The event again (Stripe redelivers): still one reminder, the seat released once.
        # The sandbox serves the whole test session: this Session's own event.
        events = await sandbox.get(
            "/v1/events", params={"type": "checkout.session.expired", "limit": 100}
        )
        [event_id] = [e["id"] for e in events.json()["data"] if e["data"]["object"]["id"] == sid]
        assert (await sandbox.post(f"/_sandbox/events/{event_id}/resend")).status_code == 200
        await eventually(lambda: deliveries(fresh, event_id) >= 2)
        [text] = reminders(fresh, "ada@example.com")
        link = RECOVERY_LINK.search(text)
        assert link, text
        assert ledger_consistent(fresh.engine, "DP-R1").held == 0

        page = await sandbox.get(link.group(1).removeprefix(fresh.sandbox_url))
        assert page.status_code == 303
        recovered = page.headers["location"].rsplit("/", 1)[-1]
        paid = await sandbox.post(f"/_sandbox/checkout/sessions/{recovered}/pay", json={})
        assert paid.status_code == 200
        assert paid.json()["checkout_session"]["recovered_from"] == sid
    rows = await eventually(
        lambda: (
            (found := enrollments(fresh, "ada@example.com"))
            and len(found) == 2
            and found[1].paid_at is not None
            and found
        )
    )
    assert rows[1].checkout_session_id == recovered and rows[1].track == "DP"
    seat = next(h for h in holds_of(fresh.engine, "DP-R1") if h.checkout_session_id == recovered)
    assert seat.state == SeatState.TAKEN
    assert ledger_consistent(fresh.engine, "DP-R1").taken == 1
    with Session(fresh.engine) as db:
        [audit] = db.exec(
            select(AuditEvent).where(col(AuditEvent.action) == "checkout_recovered")
        ).all()
    assert audit.details["recovered_from"] == sid and audit.details["cohort"] == "DP-R1"
    assert len(reminders(fresh, "ada@example.com")) == 1


async def test_no_reminder_without_consent_or_after_a_payment_since(
    fresh: Stack, sandbox_http: httpx.AsyncClient
) -> None:
    async with fresh.http() as http, sandbox_http as sandbox:
        no_consent = (await http.post(CHECKOUT, json=buyer("nc@example.com"))).json()["sessionId"]
        abandoned = (await http.post(CHECKOUT, json=buyer("paid@example.com"))).json()["sessionId"]
        await sandbox.post(
            f"/_sandbox/checkout/sessions/{abandoned}/consent", json={"promotions": "opt_in"}
        )
        again = (await http.post(CHECKOUT, json=buyer("paid@example.com"))).json()["sessionId"]
        assert (
            await sandbox.post(f"/_sandbox/checkout/sessions/{again}/pay", json={})
        ).status_code == 200
        await eventually(
            lambda: (rows := enrollments(fresh, "paid@example.com")) and rows[-1].paid_at
        )
        for sid in (no_consent, abandoned):
            assert (await sandbox.post(f"/v1/checkout/sessions/{sid}/expire")).status_code == 200
        await eventually(
            lambda: all(e.status == "EXPIRED" for e in enrollments(fresh, "nc@example.com"))
        )
        await eventually(lambda: enrollments(fresh, "paid@example.com")[0].status == "EXPIRED")
    assert reminders(fresh, "nc@example.com") == []
    assert reminders(fresh, "paid@example.com") == []
