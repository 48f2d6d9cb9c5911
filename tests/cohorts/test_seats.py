"""The seat ledger through the real checkout, webhook and sweep: holds, sold out, expiry,
the waitlist's offers and payments that arrive for a full cohort."""

from datetime import timedelta

import httpx
from sqlmodel import Session, col, select

from core.cohorts import service as cohorts
from core.contracts import EnrollmentStatus
from core.db import session_scope
from core.models import (
    AuditEvent,
    Enrollment,
    SeatState,
    WaitlistEntry,
    WaitlistState,
)
from core.payments.fulfilment import Verdict, decide
from core.payments.stripe_gateway import StripeGateway
from tests.cohorts.conftest import (
    CHECKOUT,
    WAITLIST,
    buyer,
    cohort_row,
    eventually,
    expire_holds_now,
    holds_of,
    ledger_consistent,
    make_cohort,
    offer_token,
    set_state,
)
from tests.utils.stack import Stack

SEED_DP = "DP-2027-01"


def enrollment(stack: Stack, session_id: str) -> Enrollment | None:
    with Session(stack.engine) as db:
        return db.exec(
            select(Enrollment).where(col(Enrollment.checkout_session_id) == session_id)
        ).first()


def audits(stack: Stack, action: str) -> list[AuditEvent]:
    with Session(stack.engine) as db:
        return list(db.exec(select(AuditEvent).where(col(AuditEvent.action) == action)).all())


async def pay(sandbox: httpx.AsyncClient, session_id: str) -> None:
    r = await sandbox.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
    assert r.status_code == 200, r.text


async def test_checkout_holds_a_seat_until_the_cohort_is_sold_out(fresh: Stack) -> None:
    make_cohort(fresh.engine, "DP-T1", size=2)
    async with fresh.http() as http:
        listed = (await http.get("/api/payments/cohorts/")).json()["cohorts"]
        dp = next(c for c in listed if c["track"] == "DP")
        assert (dp["code"], dp["seats_left"], dp["state"]) == ("DP-T1", 2, "on_sale")
        for n in range(2):
            r = await http.post(CHECKOUT, json=buyer(f"b{n}@example.com", cohort="DP-T1"))
            assert r.status_code == 200, r.text
        full = await http.post(CHECKOUT, json=buyer("late@example.com", cohort="DP-T1"))
        listed = (await http.get("/api/payments/cohorts/")).json()["cohorts"]
    assert full.status_code == 409
    body = full.json()
    assert body["error"] == "Cohort sold out" and body["waitlist"] is True
    assert body["cohort"] == "DP-T1" and "waitlist" in body["message"]
    c = ledger_consistent(fresh.engine, "DP-T1")
    assert (c.held, c.taken) == (2, 0)
    # The default moves on to the next cohort with a seat; the sold-out one is not listed.
    assert next(c for c in listed if c["track"] == "DP")["code"] == SEED_DP


async def test_unknown_closed_and_sold_out_cohorts_answer_4xx(fresh: Stack) -> None:
    make_cohort(fresh.engine, "DP-T2", size=1)
    set_state(fresh.engine, "DP-T2", "closed")
    make_cohort(fresh.engine, "FSD-T2", size=1, track="FSD")
    async with fresh.http() as http:
        unknown = await http.post(CHECKOUT, json=buyer("a@example.com", cohort="DP-NOPE"))
        other_track = await http.post(CHECKOUT, json=buyer("a@example.com", cohort="FSD-T2"))
        closed = await http.post(CHECKOUT, json=buyer("a@example.com", cohort="DP-T2"))
        bad = await http.post(CHECKOUT, json=buyer("a@example.com", cohort="no spaces!"))
        set_state(fresh.engine, SEED_DP, "closed")
        none_on_sale = await http.post(CHECKOUT, json=buyer("a@example.com"))
    assert unknown.status_code == 404 and unknown.json()["error"] == "Cohort not found"
    assert other_track.status_code == 404
    assert closed.status_code == 409 and closed.json()["waitlist"] is False
    assert bad.status_code == 400 and bad.json()["fields"][0]["field"] == "cohort"
    assert none_on_sale.status_code == 409
    assert "No cohort of the DP track" in none_on_sale.json()["message"]


async def test_an_expired_checkout_offers_its_seat_to_the_waitlist(
    fresh: Stack, sandbox_http: httpx.AsyncClient
) -> None:
    make_cohort(fresh.engine, "DP-T3", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    async with fresh.http() as http, sandbox_http as sandbox:
        first = await http.post(CHECKOUT, json=buyer("first@example.com"))
        assert first.status_code == 200
        sold_out = await http.post(CHECKOUT, json=buyer("second@example.com"))
        assert sold_out.status_code == 409 and sold_out.json()["cohort"] == "DP-T3"
        joined = await http.post(WAITLIST, json=buyer("second@example.com"))
        again = await http.post(WAITLIST, json=buyer("second@example.com"))
        third = await http.post(WAITLIST, json=buyer("third@example.com", cohort="DP-T3"))
        assert joined.status_code == 201 and joined.json()["position"] == 1
        assert again.status_code == 200 and again.json()["created"] is False
        assert third.json()["position"] == 2
        fresh.mail.wait_for(lambda m: "waitlist" in str(m["Subject"]) and "second@" in m["To"])

        # Stripe expires the Session: its webhook gives the seat to the first in line.
        r = await sandbox.post(f"/v1/checkout/sessions/{first.json()['sessionId']}/expire")
        assert r.status_code == 200, r.text
        token = offer_token(fresh, "second@example.com")
        assert "DP-T3" in str(cohort_row(fresh.engine, "DP-T3").code)
        c = ledger_consistent(fresh.engine, "DP-T3")
        assert (c.held, c.taken) == (1, 0)  # held for the offer now
        # The public still finds it sold out; the offer is personal.
        public = await http.post(CHECKOUT, json=buyer("fourth@example.com", cohort="DP-T3"))
        stolen = await http.post(CHECKOUT, json=buyer("third@example.com", offer=token))
        assert public.status_code == 409 and stolen.status_code == 409
        assert stolen.json()["error"] == "Offer not valid"

        page = await http.get(f"/get-started?track=DP&offer={token}")
        assert "A seat is held for you" in page.text and "second@example.com" in page.text
        claimed = await http.post(CHECKOUT, json=buyer("second@example.com", offer=token))
        assert claimed.status_code == 200, claimed.text
        await pay(sandbox, claimed.json()["sessionId"])
    sid = claimed.json()["sessionId"]
    await eventually(lambda: (e := enrollment(fresh, sid)) and e.paid_at is not None)
    c = ledger_consistent(fresh.engine, "DP-T3")
    assert (c.held, c.taken) == (0, 1)
    with Session(fresh.engine) as db:
        states = {e.email: e.state for e in db.exec(select(WaitlistEntry)).all()}
    assert states == {
        "second@example.com": WaitlistState.CLAIMED,
        "third@example.com": WaitlistState.WAITING,
    }
    assert [a.details["position"] for a in audits(fresh, "waitlist_offered")] == [1]
    assert len(audits(fresh, "waitlist_offer_claimed")) == 1


async def test_an_offer_not_taken_passes_to_the_next_person(fresh: Stack) -> None:
    make_cohort(fresh.engine, "DP-T4", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    async with fresh.http() as http:
        first = await http.post(CHECKOUT, json=buyer("first@example.com"))
        for email in ("w1@example.com", "w2@example.com"):
            assert (await http.post(WAITLIST, json=buyer(email))).status_code == 201
    expire_holds_now(fresh.engine, [first.json()["sessionId"]])
    result = cohorts.sweep(fresh.engine, fresh.settings)
    assert (result.expired, result.offers) == (1, 1)
    offer_token(fresh, "w1@example.com")
    # w1's window runs out: the sweep passes the seat on to w2.
    with Session(fresh.engine) as db:
        entry = db.exec(select(WaitlistEntry).where(WaitlistEntry.email == "w1@example.com")).one()
        entry_id = entry.id

    from tests.cohorts.conftest import session_scope, utcnow  # the fixtures' own helpers

    with session_scope(fresh.engine) as db:
        row = db.get(WaitlistEntry, entry_id)
        assert row is not None
        row.offer_expires_at = utcnow() - timedelta(seconds=1)
        for hold in holds_of(fresh.engine, "DP-T4"):
            if hold.waitlist_entry_id == entry_id:
                hold.expires_at = utcnow() - timedelta(seconds=1)
                db.add(hold)
        db.add(row)
    result = cohorts.sweep(fresh.engine, fresh.settings)
    assert (result.passed, result.offers) == (1, 1)
    offer_token(fresh, "w2@example.com")
    assert len(audits(fresh, "waitlist_offer_passed")) == 1
    c = ledger_consistent(fresh.engine, "DP-T4")
    assert (c.held, c.taken) == (1, 0)


async def test_a_late_payment_for_a_full_cohort_is_refunded_and_support_told(
    fresh: Stack, sandbox_http: httpx.AsyncClient
) -> None:
    make_cohort(fresh.engine, "DP-T5", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    async with fresh.http() as http, sandbox_http as sandbox:
        late = (await http.post(CHECKOUT, json=buyer("late@example.com"))).json()["sessionId"]
        expire_holds_now(fresh.engine, [late])  # our hold ran out; Stripe's page is still open
        taker = await http.post(CHECKOUT, json=buyer("taker@example.com"))
        assert taker.status_code == 200  # the expired hold went back to the public
        await pay(sandbox, late)
        row = await eventually(
            lambda: (e := enrollment(fresh, late)) and e.status == EnrollmentStatus.CANCELLED and e
        )
        assert "sold out" in (row.attention_reason or "")
        refunds = await eventually(lambda: audits(fresh, "sold_out_refunded"))
        refund = await sandbox.get(f"/v1/refunds/{refunds[0].details['refund_id']}")
        assert refund.json()["status"] == "succeeded"
        await pay(sandbox, taker.json()["sessionId"])
        await eventually(
            lambda: (e := enrollment(fresh, taker.json()["sessionId"])) and e.paid_at is not None
        )
    fresh.mail.wait_for(lambda m: "sold-out cohort" in str(m["Subject"]))
    assert [a.details["outcome"] for a in audits(fresh, "sold_out_payment")] == ["refund"]
    c = ledger_consistent(fresh.engine, "DP-T5")
    assert (c.held, c.taken) == (0, 1)


async def test_a_late_payment_moves_to_the_next_cohort_when_set_to(
    fresh: Stack, sandbox_http: httpx.AsyncClient
) -> None:
    make_cohort(fresh.engine, "DP-T6", size=1)
    settings = fresh.settings.model_copy(update={"sold_out_payment": "next_cohort"})
    gateway = StripeGateway(settings)
    async with fresh.webhooks_lost(), fresh.http() as http, sandbox_http as sandbox:
        late = await http.post(CHECKOUT, json=buyer("late@example.com", cohort="DP-T6"))
        late_id = late.json()["sessionId"]
        expire_holds_now(fresh.engine, [late_id])
        taker = await http.post(CHECKOUT, json=buyer("taker@example.com", cohort="DP-T6"))
        assert taker.status_code == 200
        await pay(sandbox, late_id)
    decision = decide(late_id, "test", gateway, fresh.engine, settings)
    assert decision.verdict == Verdict.FULFIL
    [moved] = audits(fresh, "sold_out_payment")
    assert moved.details == {
        **moved.details,
        "outcome": "moved",
        "cohort": "DP-T6",
        "moved_to": SEED_DP,
    }
    again = decide(late_id, "test", gateway, fresh.engine, settings)  # idempotent
    assert again.verdict == Verdict.FULFIL and len(audits(fresh, "sold_out_payment")) == 1
    seat = next(h for h in holds_of(fresh.engine, SEED_DP) if h.checkout_session_id == late_id)
    assert seat.state == SeatState.TAKEN
    ledger_consistent(fresh.engine, "DP-T6")
    assert ledger_consistent(fresh.engine, SEED_DP).taken == 1


async def test_a_cancelled_enrollment_gives_its_seat_back_before_the_start(fresh: Stack) -> None:
    make_cohort(fresh.engine, "DP-T7", size=1)
    async with fresh.http() as http:
        sid = (await http.post(CHECKOUT, json=buyer("c@example.com", cohort="DP-T7"))).json()[
            "sessionId"
        ]
    with session_scope(fresh.engine) as db:
        row = db.exec(select(Enrollment).where(Enrollment.checkout_session_id == sid)).one()
        assert cohorts.claim_seat(db, row, fresh.settings).outcome == "seated"
        row.status = EnrollmentStatus.REVOKED  # refunded in full (a revocation's end state)
        db.add(row)
    assert ledger_consistent(fresh.engine, "DP-T7").taken == 1
    result = cohorts.sweep(fresh.engine, fresh.settings)
    assert result.released == 1
    c = ledger_consistent(fresh.engine, "DP-T7")
    assert (c.held, c.taken) == (0, 0)


async def test_the_form_without_javascript_joins_the_waitlist(fresh: Stack) -> None:
    make_cohort(fresh.engine, "DP-T8", size=1)
    set_state(fresh.engine, SEED_DP, "closed")
    form = {"email": "nojs@example.com", "name": "No Script", "waitlist": "DP"}
    async with fresh.http() as http:
        early = await http.post("/get-started", data=form)
        assert early.status_code == 409 and "has seats left" in early.text
        assert (await http.post(CHECKOUT, json=buyer("first@example.com"))).status_code == 200
        page = await http.get("/get-started")
        assert "Sold out" in page.text and "Join the Data Professional waitlist" in page.text
        joined = await http.post("/get-started", data=form)
    assert joined.status_code == 200
    assert "on the waitlist for cohort DP-T8, place 1" in joined.text
    fresh.mail.wait_for(lambda m: "nojs@example.com" in m["To"], timeout=10)
