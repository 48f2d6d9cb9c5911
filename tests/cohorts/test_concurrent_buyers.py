"""200 buyers at once for a 20-seat cohort: every one of them pays (some after their hold
ran out), and the cohort ends with exactly 20 enrollments, every other buyer on the
waitlist or refunded, and a ledger whose counters equal its rows."""

import asyncio
from typing import Any

import httpx
from sqlmodel import Session, col, select

from core.cohorts import service as cohorts
from core.contracts import EnrollmentStatus
from core.models import AuditEvent, Enrollment, SeatState, WaitlistEntry, WaitlistState
from tests.cohorts.conftest import (
    CHECKOUT,
    WAITLIST,
    buyer,
    eventually,
    expire_holds_now,
    holds_of,
    ledger_consistent,
    make_cohort,
    offer_token,
    set_state,
)
from tests.utils.stack import Stack

BUYERS = 200
SEATS = 20
LATE = 8  # their hold runs out before they pay


def rows(stack: Stack) -> list[Enrollment]:
    with Session(stack.engine) as db:
        return list(db.exec(select(Enrollment)).all())


def waitlist(stack: Stack) -> dict[str, WaitlistEntry]:
    with Session(stack.engine) as db:
        return {e.email: e for e in db.exec(select(WaitlistEntry)).all()}


async def test_200_buyers_for_20_seats(fresh: Stack) -> None:
    make_cohort(fresh.engine, "DP-RUSH", size=SEATS)
    set_state(fresh.engine, "DP-2027-01", "closed")
    emails = [f"buyer{n:03d}@example.com" for n in range(BUYERS)]
    # No keep-alive: a connection idle past the server's keep-alive timeout between phases
    # would be reset under the next request.
    limits = httpx.Limits(max_connections=BUYERS, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=fresh.api_url, timeout=120, limits=limits) as http,
        httpx.AsyncClient(
            base_url=fresh.sandbox_url,
            timeout=120,
            limits=limits,
            headers={"Authorization": f"Bearer {fresh.settings.stripe_api_key}"},
        ) as sandbox,
    ):

        async def pay(session_id: str) -> None:
            r = await sandbox.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
            assert r.status_code == 200, r.text

        # Everyone at once.
        answers = await asyncio.gather(*(http.post(CHECKOUT, json=buyer(e)) for e in emails))
        sessions = {e: r.json()["sessionId"] for e, r in zip(emails, answers, strict=True)
                    if r.status_code == 200}  # fmt: skip
        refused = [e for e, r in zip(emails, answers, strict=True) if r.status_code != 200]
        assert len(sessions) == SEATS
        assert {r.status_code for r in answers} == {200, 409}
        assert all(r.json()["waitlist"] for r in answers if r.status_code == 409)

        joined = await asyncio.gather(*(http.post(WAITLIST, json=buyer(e)) for e in refused))
        assert {r.status_code for r in joined} == {201}
        assert sorted(e.position for e in waitlist(fresh).values()) == list(
            range(1, BUYERS - SEATS + 1)
        )

        # Some holds run out before their buyer pays; the sweep races those payments.
        holders = list(sessions)
        late = holders[:LATE]
        expire_holds_now(fresh.engine, [sessions[e] for e in late])
        sweeps: list[Any] = [
            asyncio.to_thread(cohorts.sweep, fresh.engine, fresh.settings) for _ in range(3)
        ]
        await asyncio.gather(*(pay(sessions[e]) for e in holders), *sweeps)

        # Every seat the sweep freed is offered, in waitlist order; each offer is taken.
        offered: dict[str, str] = {}
        for _ in range(10):
            await asyncio.to_thread(cohorts.sweep, fresh.engine, fresh.settings)
            fresh_offers = [
                e.email
                for e in waitlist(fresh).values()
                if e.state == WaitlistState.OFFERED and e.email not in offered
            ]
            if not fresh_offers:
                if ledger_consistent(fresh.engine, "DP-RUSH").held == 0:
                    break
                await asyncio.sleep(0.3)  # payments' webhooks still on their way
                continue
            for email in fresh_offers:
                token = offer_token(fresh, email)
                r = await http.post(CHECKOUT, json=buyer(email, offer=token))
                assert r.status_code == 200, r.text
                offered[email] = r.json()["sessionId"]
            await asyncio.gather(*(pay(offered[e]) for e in fresh_offers))
        paid = {**sessions, **offered}

        def settled() -> bool:
            by_sid = {r.checkout_session_id: r for r in rows(fresh)}
            return all(
                by_sid[sid].paid_at is not None or by_sid[sid].status == EnrollmentStatus.CANCELLED
                for sid in paid.values()
            )

        await eventually(settled, 60)
        refunds = {}
        with Session(fresh.engine) as db:
            for audit in db.exec(
                select(AuditEvent).where(col(AuditEvent.action) == "sold_out_refunded")
            ).all():
                refunds[audit.enrollment_id] = audit.details["refund_id"]
        for refund_id in refunds.values():
            assert (await sandbox.get(f"/v1/refunds/{refund_id}")).json()["status"] == "succeeded"

    by_sid = {r.checkout_session_id: r for r in rows(fresh)}
    enrolled = {e for e, sid in paid.items() if by_sid[sid].paid_at is not None}
    refunded = {e for e, sid in paid.items() if by_sid[sid].status == EnrollmentStatus.CANCELLED}
    still_waiting = {e.email for e in waitlist(fresh).values() if e.state == WaitlistState.WAITING}
    assert len(enrolled) == SEATS
    # Each refund is a late payer whose seat went to the waitlist; nobody else lost money.
    assert refunded <= set(late) and len(refunds) == len(refunded)
    assert {by_sid[paid[e]].id for e in refunded} == set(refunds)
    # Every buyer is accounted for, once.
    assert enrolled | refunded | still_waiting == set(emails)
    assert len(enrolled) + len(refunded) + len(still_waiting) == BUYERS
    # Each seat a late payer lost went to the next person in line, who took it.
    assert len(offered) == len(refunded) and set(offered) <= enrolled
    first_in_line = {e.email for e in waitlist(fresh).values() if e.position <= len(offered)}
    assert set(offered) == first_in_line
    c = ledger_consistent(fresh.engine, "DP-RUSH")
    assert (c.held, c.taken) == (0, SEATS)
    taken = {h.checkout_session_id for h in holds_of(fresh.engine, "DP-RUSH")
             if h.state == SeatState.TAKEN}  # fmt: skip
    assert taken == {paid[e] for e in enrolled}
