"""Cohort use cases: the seat a checkout holds, the seat a payment takes, releases, the
waitlist and its offers, and staff's cohort edits. Services never commit, except the two
units of work that must be visible before a Stripe round trip (`hold_seat`,
`abandon_hold`) and the sweep, which runs on its own.

Why an atomic ledger in the database rather than an entity workflow per cohort: the seat
must be decided inside the checkout request (409 before any Stripe call) and inside the
fulfilment gate's transaction (which already reads our enrollment row); a row lock and a
conditional UPDATE do that in one round trip on PostgreSQL and on SQLite (`make dev`),
with a CHECK constraint that makes an oversold cohort unwritable, and they keep working
while Temporal is down. Expiry needs no timer of its own: a hold carries its Session's
`expires_at`, an expired hold is released by the next ledger change of its cohort, by
`checkout.session.expired`, or by the reconcile Schedule's sweep, whichever comes first.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.policy import default as MAIL_POLICY
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from core import repository as repo
from core.cohorts import repository as ledger
from core.contracts import ACCESS_ENDED_STATUSES, NOT_PAID_STATUSES
from core.crypto import new_token, token_hash
from core.db import session_scope
from core.errors import AppError, NotFound
from core.mail import Mailer, send_outbox
from core.models import (
    Cohort,
    CohortState,
    Enrollment,
    OutboxMessage,
    SeatHold,
    SeatState,
    WaitlistEntry,
    WaitlistState,
    utcnow,
)
from core.settings import Settings
from core.tracks import TRACKS

log = logging.getLogger(__name__)


class CohortNotFound(NotFound):
    error = "Cohort not found"


class CohortUnavailable(AppError):
    """Closed, not on sale yet, or sold out: the answer says what to do next."""

    status_code = 409
    error = "Cohort unavailable"


class SoldOut(CohortUnavailable):
    error = "Cohort sold out"


class OfferInvalid(AppError):
    status_code = 409
    error = "Offer not valid"


class CohortRuleBroken(AppError):
    status_code = 409
    error = "Cohort not changed"


# ---- reading --------------------------------------------------------------------------


@dataclass
class CohortView:
    code: str
    track: str
    starts_at: datetime
    size: int
    seats_left: int
    state: str  # draft | on_sale | sold_out | closed | running
    held: int
    taken: int
    waiting: int
    sales_open_at: datetime
    sales_close_at: datetime | None

    @property
    def on_sale(self) -> bool:
        return self.state == CohortState.ON_SALE


def view(db: Session, cohort: Cohort, now: datetime | None = None) -> CohortView:
    """The cohort as buyers and staff see it: expired holds not swept yet count as free."""
    now = now or utcnow()
    assert cohort.id is not None
    free = cohort.size - cohort.taken - cohort.held + ledger.expired_unswept(db, cohort.id, now)
    waiting = ledger.waiting_count(db, cohort.id)
    state = cohort.state
    if state == CohortState.ON_SALE:
        if cohort.sales_open_at > now:
            state = CohortState.DRAFT
        elif cohort.sales_close_at is not None and cohort.sales_close_at <= now:
            state = CohortState.CLOSED
        elif free <= 0 or waiting:
            state = "sold_out"
    return CohortView(
        code=cohort.code,
        track=cohort.track,
        starts_at=cohort.starts_at,
        size=cohort.size,
        seats_left=max(free, 0) if not waiting else 0,
        state=state,
        held=cohort.held,
        taken=cohort.taken,
        waiting=waiting,
        sales_open_at=cohort.sales_open_at,
        sales_close_at=cohort.sales_close_at,
    )


def next_cohorts(db: Session, now: datetime | None = None) -> dict[str, CohortView]:
    """Per track, the cohort a buyer gets by default: the first on sale with a free seat,
    else the first on sale (sold out: its waitlist)."""
    now = now or utcnow()
    result: dict[str, CohortView] = {}
    for track in TRACKS:
        views = [view(db, c, now) for c in ledger.on_sale_cohorts(db, track, now)]
        chosen = next((v for v in views if v.on_sale), views[0] if views else None)
        if chosen is not None:
            result[track] = chosen
    return result


def waitlist_hint(code: str) -> str:
    return (
        f"Cohort {code} is sold out. Join its waitlist (POST /api/payments/waitlist/ with "
        f'"cohort": "{code}"): when a seat frees up it is offered to the next person in line.'
    )


# ---- the checkout's hold --------------------------------------------------------------


@dataclass
class CheckoutSeat:
    cohort_id: int
    code: str
    hold_id: int | None = None  # a public checkout's hold (made by `hold_seat`)
    offer: WaitlistEntry | None = None  # the waitlist offer this checkout claims


def offered_seat(db: Session, track: str, code: str | None, token: str, email: str) -> CheckoutSeat:
    """The seat a waitlist offer holds for its person, or the 409 that says why not."""
    entry = ledger.entry_by_offer_token(db, token_hash(token))
    if entry is None:
        raise OfferInvalid("This waitlist offer link is not valid.")
    cohort = ledger.get_cohort(db, entry.cohort_id)
    assert cohort is not None and cohort.id is not None
    if entry.state == WaitlistState.CLAIMED:
        raise OfferInvalid("This waitlist offer was already used to pay for the seat.")
    if entry.state != WaitlistState.OFFERED or (
        entry.offer_expires_at is not None and entry.offer_expires_at <= utcnow()
    ):
        raise OfferInvalid(
            "This waitlist offer has run out; the seat went to the next person in line."
        )
    if cohort.track != track or (code and code != cohort.code):
        raise OfferInvalid(f"This offer is for cohort {cohort.code} ({cohort.track}).")
    if entry.email != email:
        raise OfferInvalid("This offer is for the email address it was sent to.")
    return CheckoutSeat(cohort.id, cohort.code, offer=entry)


def reserve_seat(
    db: Session,
    *,
    track: str,
    code: str | None,
    offer_token: str | None,
    email: str,
    expires_at: datetime,
) -> CheckoutSeat:
    """The checkout's cohort and one seat held in it until `expires_at` (a waitlist offer
    brings its own). Raises the 4xx that says why not. The caller commits at once, before
    the Stripe round trip: other buyers must see the hold, and no lock may be held across
    that call (`api/payments/checkout.py`).

    The fast path is one conditional UPDATE and one INSERT; only a cohort that looks full
    is locked and cleared of expired holds before the second try."""
    if offer_token:
        return offered_seat(db, track, code, offer_token, email)
    now = utcnow()
    if not code and (fast := ledger.take_first_hold(db, track, now)) is not None:
        return _new_hold(db, *fast, expires_at)
    if code:
        cohort = ledger.get_cohort_by_code(db, code)
        if cohort is None or cohort.track != track:
            raise CohortNotFound(f"There is no cohort {code} of the {track} track.")
        if not _sales_open(cohort, now):
            raise CohortUnavailable(
                f"Cohort {cohort.code} is not on sale; choose another cohort.",
                cohort=cohort.code,
                waitlist=False,
            )
        candidates = [cohort]
    else:
        candidates = ledger.on_sale_cohorts(db, track, now)
        if not candidates:
            raise CohortUnavailable(
                f"No cohort of the {track} track is on sale right now.",
                cohort=None,
                waitlist=False,
            )
    for cohort in candidates:
        assert cohort.id is not None
        if not ledger.take_hold(db, cohort.id, public=True):
            ledger.lock_cohort(db, cohort.id, now)
            if not ledger.release_expired_holds(db, cohort.id, now) or not ledger.take_hold(
                db, cohort.id, public=True
            ):
                continue
        return _new_hold(db, cohort.id, cohort.code, expires_at)
    first = candidates[0].code
    raise SoldOut(waitlist_hint(first), cohort=first, waitlist=True)


def _new_hold(db: Session, cohort_id: int, code: str, expires_at: datetime) -> CheckoutSeat:
    hold_id = db.execute(
        sa.insert(SeatHold)
        .values(
            cohort_id=cohort_id,
            state=SeatState.HELD,
            expires_at=expires_at,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .returning(col(SeatHold.id))
    ).scalar_one()
    return CheckoutSeat(cohort_id, code, hold_id=int(hold_id))


def _sales_open(cohort: Cohort, now: datetime) -> bool:
    return (
        cohort.state == CohortState.ON_SALE
        and cohort.sales_open_at <= now
        and (cohort.sales_close_at is None or cohort.sales_close_at > now)
    )


def abandon_hold(engine: sa.Engine, seat: CheckoutSeat) -> None:
    """Stripe refused the Session: its hold goes back at once."""
    if seat.hold_id is None:
        return
    now = utcnow()
    with session_scope(engine) as db:
        ledger.lock_cohort(db, seat.cohort_id, now)
        hold = db.get(SeatHold, seat.hold_id)
        if hold is not None:
            ledger.release_hold(db, hold, "checkout_failed", now)


def attach_session(
    db: Session, seat: CheckoutSeat, checkout_session_id: str, expires_at: datetime
) -> None:
    """The Session the hold is for (in the checkout request's own transaction)."""
    if seat.offer is not None:
        assert seat.offer.id is not None
        hold = ledger.hold_of_entry(db, seat.offer.id)
        if hold is None:
            return
        # The offer's seat stays held for the whole Session, even past the offer's window.
        hold.expires_at = max(hold.expires_at, expires_at)
        hold.checkout_session_id = checkout_session_id
        hold.updated_at = utcnow()
        db.add(hold)
        return
    db.execute(
        sa.update(SeatHold)
        .where(col(SeatHold.id) == seat.hold_id)
        .values(checkout_session_id=checkout_session_id, updated_at=utcnow())
    )


# ---- the payment's seat ---------------------------------------------------------------


@dataclass
class SeatClaim:
    """What a paid Session's seat came to: `seated` (its hold), `seated_late` (a free seat
    after its hold was released), `moved` (the next cohort), `sold_out` (no seat: refund),
    `no_ledger` (a row from before cohorts, or a grant)."""

    outcome: str
    cohort: str = ""
    moved_from: str = ""

    @property
    def seated(self) -> bool:
        return self.outcome != "sold_out"


def claim_seat(db: Session, row: Enrollment, settings: Settings) -> SeatClaim:
    """The paid checkout's seat, inside the fulfilment gate's transaction. Idempotent: a
    second call for the same Session finds its seat taken."""
    now = utcnow()
    hold = db.exec(
        select(SeatHold).where(col(SeatHold.checkout_session_id) == row.checkout_session_id)
    ).first()
    if hold is None:
        return SeatClaim("no_ledger")
    cohort = ledger.get_cohort(db, hold.cohort_id)
    assert cohort is not None and cohort.id is not None
    if hold.state == SeatState.TAKEN:
        return SeatClaim("seated", cohort.code)
    ledger.lock_cohort(db, cohort.id, now)
    db.refresh(hold)
    if hold.state == SeatState.HELD and ledger.convert_hold(db, hold, now):
        _claimed_offer(db, hold, row, now)
        return SeatClaim("seated", cohort.code)
    if hold.state == SeatState.TAKEN:
        return SeatClaim("seated", cohort.code)
    # Released (expired, then paid late): a free seat if there is one, else the policy.
    ledger.release_expired_holds(db, cohort.id, now)
    if ledger.take_free_seat(db, cohort.id):
        _retake(db, hold, cohort.id, now)
        repo.add_audit(
            db, "seat_taken_late", enrollment_id=row.id, cohort=cohort.code,
            reason=hold.release_reason,
        )  # fmt: skip
        return SeatClaim("seated_late", cohort.code)
    if settings.sold_out_payment == "next_cohort":
        for other in ledger.on_sale_cohorts(db, cohort.track, now):
            if other.id == cohort.id or other.starts_at < cohort.starts_at or other.id is None:
                continue
            ledger.lock_cohort(db, other.id, now)
            ledger.release_expired_holds(db, other.id, now)
            if ledger.take_free_seat(db, other.id):
                _retake(db, hold, other.id, now)
                repo.add_audit(
                    db, "sold_out_payment", enrollment_id=row.id, cohort=cohort.code,
                    outcome="moved", moved_to=other.code,
                )  # fmt: skip
                return SeatClaim("moved", other.code, moved_from=cohort.code)
    return SeatClaim("sold_out", cohort.code)


def _retake(db: Session, hold: SeatHold, cohort_id: int, now: datetime) -> None:
    hold.cohort_id, hold.state, hold.updated_at = cohort_id, SeatState.TAKEN, now
    db.add(hold)
    db.flush()


def _claimed_offer(db: Session, hold: SeatHold, row: Enrollment, now: datetime) -> None:
    if hold.waitlist_entry_id is None:
        return
    entry = db.get(WaitlistEntry, hold.waitlist_entry_id)
    if entry is None:
        return
    entry.state, entry.updated_at = WaitlistState.CLAIMED, now
    db.add(entry)
    repo.add_audit(
        db, "waitlist_offer_claimed", enrollment_id=row.id, cohort_id=hold.cohort_id,
        position=entry.position, email=entry.email,
    )  # fmt: skip


# ---- releases, offers and the sweep ---------------------------------------------------


@dataclass
class SweepResult:
    expired: int = 0
    released: int = 0
    offers: int = 0
    passed: int = 0
    mails: list[int] = field(default_factory=list)  # outbox ids to send after commit


def settle_cohort(db: Session, cohort_id: int, settings: Settings, result: SweepResult) -> None:
    """One cohort's due changes, under its lock: expired holds and offers released, seats of
    ended enrollments released (before the start), free seats offered to the waitlist."""
    now = utcnow()
    if not ledger.lock_cohort(db, cohort_id, now):
        return
    cohort = ledger.get_cohort(db, cohort_id)
    assert cohort is not None
    for hold in ledger.release_expired_holds(db, cohort_id, now):
        result.expired += 1
        repo.add_audit(
            db, "seat_released", cohort=cohort.code, reason="expired",
            checkout_session_id=hold.checkout_session_id,
        )  # fmt: skip
    for entry in ledger.expired_offers(db, cohort_id, now):
        offer_hold = ledger.hold_of_entry(db, entry.id) if entry.id is not None else None
        if offer_hold is not None and offer_hold.expires_at > now:
            continue  # the person is paying right now: the Session's lifetime wins
        if offer_hold is not None:
            ledger.release_hold(db, offer_hold, "offer_passed", now)
        entry.state, entry.updated_at = WaitlistState.PASSED, now
        db.add(entry)
        result.passed += 1
        repo.add_audit(
            db, "waitlist_offer_passed", cohort=cohort.code, position=entry.position,
            email=entry.email,
        )  # fmt: skip
    if cohort.starts_at > now:
        for hold in ledger.ended_seats(db, cohort_id):
            if ledger.release_hold(db, hold, "access_ended", now):
                result.released += 1
                repo.add_audit(
                    db, "seat_released", cohort=cohort.code, reason="access_ended",
                    checkout_session_id=hold.checkout_session_id,
                )  # fmt: skip
    db.flush()
    make_offers(db, cohort, settings, result, now)


def make_offers(
    db: Session, cohort: Cohort, settings: Settings, result: SweepResult, now: datetime
) -> None:
    """Each free seat held for the next person waiting, with a personal checkout link."""
    assert cohort.id is not None
    db.refresh(cohort)
    free = cohort.size - cohort.held - cohort.taken
    if free <= 0 or cohort.state != CohortState.ON_SALE:
        return
    mailer = Mailer(settings)
    for entry in ledger.next_waiting(db, cohort.id, free):
        if not ledger.take_hold(db, cohort.id, public=False):
            return
        raw = new_token()
        expires = now + timedelta(hours=settings.waitlist_offer_hours)
        entry.state, entry.offered_at, entry.offer_expires_at = WaitlistState.OFFERED, now, expires
        entry.offer_token_hash, entry.updated_at = token_hash(raw), now
        db.add(entry)
        db.flush()
        db.add(SeatHold(cohort_id=cohort.id, waitlist_entry_id=entry.id, expires_at=expires))
        url = f"{settings.public_base_url}/get-started?track={cohort.track}&offer={raw}"
        key = f"waitlist-offer-{entry.id}-{int(now.timestamp())}"
        msg = mailer.compose(
            to=entry.email,
            subject=f"A seat in Onramp {TRACKS[cohort.track].title} is yours to take",
            template="waitlist_offer",
            message_key=key,
            name=entry.name,
            cohort=cohort.code,
            track_title=TRACKS[cohort.track].title,
            starts_at=cohort.starts_at.strftime("%d %B %Y"),
            offer_url=url,
            offer_hours=settings.waitlist_offer_hours,
            expires_at=expires.strftime("%d %B %Y %H:%M UTC"),
        )
        outbox = OutboxMessage(
            message_key=key,
            recipient=entry.email,
            kind="waitlist_offer",
            raw=msg.as_string(policy=MAIL_POLICY),
        )
        db.add(outbox)
        db.flush()
        assert outbox.id is not None
        result.mails.append(outbox.id)
        result.offers += 1
        repo.add_audit(
            db, "waitlist_offered", cohort=cohort.code, position=entry.position,
            email=entry.email, expires_at=expires.isoformat(),
        )  # fmt: skip


def send_outbox_ids(engine: sa.Engine, settings: Settings, ids: list[int]) -> None:
    """Send committed waitlist mails; one that fails stays unsent for the next sweep."""
    mailer = Mailer(settings)
    for outbox_id in ids:
        with session_scope(engine) as db:
            row = db.get(OutboxMessage, outbox_id)
            if row is None or row.sent_at is not None:
                continue
            try:
                send_outbox(mailer, row)
            except OSError:
                log.warning("waitlist mail not sent; the next sweep retries it")
                continue
            row.sent_at = utcnow()
            db.add(row)


def unsent_waitlist_mail(engine: sa.Engine) -> list[int]:
    with session_scope(engine) as db:
        ids = db.exec(
            select(OutboxMessage.id)
            .where(col(OutboxMessage.kind).in_(("waitlist_offer", "waitlist_joined")))
            .where(col(OutboxMessage.sent_at).is_(None))
        ).all()
    return [int(i) for i in ids if i is not None]


def sweep(engine: sa.Engine, settings: Settings) -> SweepResult:
    """Every cohort with holds, seats or a waitlist settled, one transaction per cohort
    (the reconcile Schedule runs this; so can support). Blocking: call it from a thread."""
    result = SweepResult()
    with session_scope(engine) as db:
        cohort_ids = ledger.cohorts_with_activity(db)
    for cohort_id in cohort_ids:
        with session_scope(engine) as db:
            settle_cohort(db, cohort_id, settings, result)
    send_outbox_ids(engine, settings, [*result.mails, *unsent_waitlist_mail(engine)])
    return result


def checkout_expired(engine: sa.Engine, settings: Settings, session: dict[str, Any]) -> None:
    """`checkout.session.expired`: its hold goes back at once (and to the waitlist), and a
    buyer who consented gets one reminder with Stripe's recovery link."""
    now = utcnow()
    result = SweepResult()
    sid = str(session.get("id"))
    with session_scope(engine) as db:
        hold = db.exec(select(SeatHold).where(col(SeatHold.checkout_session_id) == sid)).first()
        if hold is not None and hold.state == SeatState.HELD:
            ledger.lock_cohort(db, hold.cohort_id, now)
            db.refresh(hold)
            if hold.waitlist_entry_id is None and ledger.release_hold(
                db, hold, "session_expired", now
            ):
                cohort = ledger.get_cohort(db, hold.cohort_id)
                assert cohort is not None
                repo.add_audit(
                    db, "seat_released", cohort=cohort.code, reason="session_expired",
                    checkout_session_id=sid,
                )  # fmt: skip
                make_offers(db, cohort, settings, result, now)
    with session_scope(engine) as db:
        recovery = _queue_recovery(db, settings, session)
    send_outbox_ids(engine, settings, result.mails + ([recovery] if recovery else []))


def _queue_recovery(db: Session, settings: Settings, session: dict[str, Any]) -> int | None:
    """The one abandoned-checkout reminder: only with consent, a recovery URL, and no
    payment by the same person for the track since (Kajabi's rule)."""
    if not settings.checkout_recovery:
        return None
    consent = (session.get("consent") or {}).get("promotions")
    recovery = (session.get("after_expiration") or {}).get("recovery") or {}
    url = recovery.get("url")
    sid = str(session.get("id"))
    if consent != "opt_in" or not url:
        return None
    row = repo.get_enrollment_by_session(db, sid)
    if row is None:
        return None
    paid_since = db.exec(
        select(Enrollment.id)
        .where(col(Enrollment.email) == row.email)
        .where(col(Enrollment.track) == row.track)
        .where(col(Enrollment.created_at) >= row.created_at)
        .where(col(Enrollment.status).not_in(NOT_PAID_STATUSES))
    ).first()
    key = f"recovery-{sid}"
    if (
        paid_since is not None
        or db.exec(select(OutboxMessage.id).where(col(OutboxMessage.message_key) == key)).first()
    ):
        return None
    msg = Mailer(settings).compose(
        to=row.email,
        subject=f"Your Onramp {TRACKS[row.track].title} checkout is waiting",
        template="checkout_recovery",
        message_key=key,
        name=row.name,
        track_title=TRACKS[row.track].title,
        recovery_url=url,
    )
    outbox = OutboxMessage(
        message_key=key,
        enrollment_id=row.id,
        recipient=row.email,
        kind="checkout_recovery",
        raw=msg.as_string(policy=MAIL_POLICY),
    )
    db.add(outbox)
    db.flush()
    hold = db.exec(select(SeatHold).where(col(SeatHold.checkout_session_id) == sid)).first()
    cohort = ledger.get_cohort(db, hold.cohort_id) if hold is not None else None
    repo.add_audit(
        db, "checkout_recovery_sent", actor="system", enrollment_id=row.id,
        cohort=cohort.code if cohort else None,
    )  # fmt: skip
    return outbox.id


def recovered_hold(db: Session, original_session_id: str, checkout_session_id: str) -> str | None:
    """A recovered Session's place in the ledger: the expired one's cohort, no seat yet (its
    payment takes a free one like a late payment's). Returns the cohort's code."""
    original = db.exec(
        select(SeatHold).where(col(SeatHold.checkout_session_id) == original_session_id)
    ).first()
    if original is None:
        return None
    now = utcnow()
    db.add(
        SeatHold(
            cohort_id=original.cohort_id,
            checkout_session_id=checkout_session_id,
            state=SeatState.RELEASED,
            release_reason="recovered",
            expires_at=now,
        )
    )
    db.flush()
    cohort = ledger.get_cohort(db, original.cohort_id)
    return cohort.code if cohort else None


def release_seat_now(
    engine: sa.Engine, settings: Settings, checkout_session_id: str, reason: str
) -> bool:
    """Support cancelled or revoked this enrollment: its seat goes back at once (and to the
    waitlist) if its access ended and the cohort has not started; the sweep would do the
    same later. True when a seat was released."""
    now = utcnow()
    result = SweepResult()
    with session_scope(engine) as db:
        row = repo.get_enrollment_by_session(db, checkout_session_id)
        hold = db.exec(
            select(SeatHold).where(col(SeatHold.checkout_session_id) == checkout_session_id)
        ).first()
        if row is None or row.status not in ACCESS_ENDED_STATUSES or hold is None:
            return False
        cohort = ledger.get_cohort(db, hold.cohort_id)
        assert cohort is not None
        if cohort.starts_at <= now:
            return False
        ledger.lock_cohort(db, hold.cohort_id, now)
        db.refresh(hold)
        if hold.state == SeatState.RELEASED or not ledger.release_hold(db, hold, reason, now):
            return False
        repo.add_audit(
            db, "seat_released", enrollment_id=row.id, cohort=cohort.code, reason=reason,
            checkout_session_id=checkout_session_id,
        )  # fmt: skip
        db.flush()
        make_offers(db, cohort, settings, result, now)
    send_outbox_ids(engine, settings, result.mails)
    return True


# ---- the waitlist ---------------------------------------------------------------------


@dataclass
class WaitlistJoined:
    cohort: str
    position: int
    state: str
    created: bool
    mail_id: int | None = None


def join_waitlist(
    engine: sa.Engine, settings: Settings, *, track: str, code: str | None, email: str, name: str
) -> WaitlistJoined:
    """A place on a sold-out cohort's waitlist (the same place again for the same email),
    with a confirmation email. Its own unit of work: the mail follows the commit."""
    with session_scope(engine) as db:
        now = utcnow()
        if code:
            cohort = ledger.get_cohort_by_code(db, code)
            if cohort is None or cohort.track != track:
                raise CohortNotFound(f"There is no cohort {code} of the {track} track.")
        else:
            chosen = next_cohorts(db, now).get(track)
            if chosen is None:
                raise CohortUnavailable(
                    f"No cohort of the {track} track is on sale right now.", waitlist=False
                )
            cohort = ledger.get_cohort_by_code(db, chosen.code)
            assert cohort is not None
        assert cohort.id is not None
        existing = ledger.entry_by_email(db, cohort.id, email)
        if existing is not None:
            return WaitlistJoined(
                cohort.code, ledger.waiting_ahead(db, existing), existing.state, created=False
            )
        v = view(db, cohort, now)
        if v.state != "sold_out":
            if v.on_sale:
                raise CohortUnavailable(
                    f"Cohort {cohort.code} has seats left: check out instead.",
                    cohort=cohort.code,
                    waitlist=False,
                )
            raise CohortUnavailable(
                f"Cohort {cohort.code} is not on sale ({v.state}).",
                cohort=cohort.code,
                waitlist=False,
            )
        ledger.lock_cohort(db, cohort.id, now)  # positions are handed out one at a time
        entry = WaitlistEntry(
            cohort_id=cohort.id,
            email=email,
            name=name,
            position=ledger.next_position(db, cohort.id),
        )
        db.add(entry)
        db.flush()
        position = ledger.waiting_ahead(db, entry)
        msg = Mailer(settings).compose(
            to=email,
            subject=f"You're on the waitlist for Onramp {TRACKS[track].title}",
            template="waitlist_joined",
            message_key=f"waitlist-joined-{entry.id}",
            name=name,
            cohort=cohort.code,
            track_title=TRACKS[track].title,
            starts_at=cohort.starts_at.strftime("%d %B %Y"),
            position=position,
            offer_hours=settings.waitlist_offer_hours,
        )
        outbox = OutboxMessage(
            message_key=f"waitlist-joined-{entry.id}",
            recipient=email,
            kind="waitlist_joined",
            raw=msg.as_string(policy=MAIL_POLICY),
        )
        db.add(outbox)
        db.flush()
        repo.add_audit(
            db, "waitlist_joined", actor="visitor", cohort=cohort.code, position=entry.position,
            email=email,
        )  # fmt: skip
        joined = WaitlistJoined(cohort.code, position, entry.state, created=True, mail_id=outbox.id)
    if joined.mail_id is not None:
        send_outbox_ids(engine, settings, [joined.mail_id])
    return joined


# ---- staff ----------------------------------------------------------------------------

EDITABLE_STATES = {s.value for s in CohortState}
COHORT_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,39}$")


@dataclass
class CohortChange:
    track: str | None = None
    code: str | None = None
    starts_at: datetime | None = None
    size: int | None = None
    sales_open_at: datetime | None = None
    sales_close_at: datetime | None = None
    clear_sales_close: bool = False
    state: str | None = None


def create_cohort(db: Session, change: CohortChange, actor: str) -> Cohort:
    if not change.code or not change.track or change.starts_at is None or change.size is None:
        raise CohortRuleBroken("A cohort needs a code, a track, a start date and a size.")
    if change.track not in TRACKS:
        raise CohortRuleBroken(f"Unknown track {change.track!r}.")
    if not COHORT_CODE.match(change.code):
        raise CohortRuleBroken("A cohort code is 1 to 40 letters, digits and dashes.")
    if ledger.get_cohort_by_code(db, change.code) is not None:
        raise CohortRuleBroken(f"Cohort {change.code} exists already.")
    if change.size < 1:
        raise CohortRuleBroken("A cohort has at least one seat.")
    state = change.state or CohortState.DRAFT
    if state not in EDITABLE_STATES:
        raise CohortRuleBroken(f"Unknown state {state!r}.")
    cohort = Cohort(
        code=change.code,
        track=change.track,
        starts_at=change.starts_at,
        size=change.size,
        sales_open_at=change.sales_open_at or utcnow(),
        sales_close_at=change.sales_close_at,
        state=state,
    )
    _check_window(cohort)
    db.add(cohort)
    db.flush()
    repo.add_audit(db, "cohort_created", actor=actor, cohort=cohort.code, size=cohort.size)
    return cohort


def edit_cohort(db: Session, code: str, change: CohortChange, actor: str) -> Cohort:
    """Staff edits never touch the counters: a smaller size than the seats already held
    and taken is refused, so the cap never starts from zero again."""
    cohort = ledger.get_cohort_by_code(db, code)
    if cohort is None or cohort.id is None:
        raise CohortNotFound(f"There is no cohort {code}.")
    ledger.lock_cohort(db, cohort.id, utcnow())
    db.refresh(cohort)
    changed: dict[str, Any] = {}
    if change.size is not None and change.size != cohort.size:
        if change.size < cohort.held + cohort.taken:
            raise CohortRuleBroken(
                f"Cohort {code} has {cohort.taken} seats taken and {cohort.held} held: the "
                f"size cannot go below {cohort.held + cohort.taken}."
            )
        changed["size"] = [cohort.size, change.size]
        cohort.size = change.size
    if change.state is not None and change.state != cohort.state:
        if change.state not in EDITABLE_STATES:
            raise CohortRuleBroken(f"Unknown state {change.state!r}.")
        changed["state"] = [cohort.state, change.state]
        cohort.state = change.state
    for name in ("starts_at", "sales_open_at", "sales_close_at"):
        value = getattr(change, name)
        if value is not None and value != getattr(cohort, name):
            changed[name] = [str(getattr(cohort, name)), str(value)]
            setattr(cohort, name, value)
    if change.clear_sales_close and cohort.sales_close_at is not None:
        changed["sales_close_at"] = [str(cohort.sales_close_at), None]
        cohort.sales_close_at = None
    _check_window(cohort)
    cohort.updated_at = utcnow()
    db.add(cohort)
    db.flush()
    repo.add_audit(db, "cohort_edited", actor=actor, cohort=code, changes=changed)
    return cohort


def _check_window(cohort: Cohort) -> None:
    if cohort.sales_close_at is not None and cohort.sales_close_at <= cohort.sales_open_at:
        raise CohortRuleBroken("Sales must close after they open.")
