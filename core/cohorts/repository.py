"""Every query and ledger statement of cohorts, seats and waitlists. Nothing here commits.

The ledger: `cohort.held` and `cohort.taken` count the `seat_hold` rows in state held and
taken. Each change to them first locks the cohort row (`lock_cohort`: an UPDATE, which is a
row lock on PostgreSQL and the write lock on SQLite), then moves the rows and the counters
in the same transaction, with conditional UPDATEs; the table's CHECK constraint
(`held + taken <= size`) refuses any write that would oversell, whatever the code does.
"""

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from core.contracts import ACCESS_ENDED_STATUSES
from core.models import (
    Cohort,
    CohortState,
    Enrollment,
    SeatHold,
    SeatState,
    WaitlistEntry,
    WaitlistState,
    utcnow,
)


def lock_cohort(db: Session, cohort_id: int, now: datetime) -> bool:
    """Serialise this cohort's ledger changes until the transaction ends. False: no cohort."""
    result = db.execute(sa.update(Cohort).where(col(Cohort.id) == cohort_id).values(updated_at=now))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def get_cohort(db: Session, cohort_id: int) -> Cohort | None:
    return db.get(Cohort, cohort_id, populate_existing=True)


def get_cohort_by_code(db: Session, code: str) -> Cohort | None:
    return db.exec(select(Cohort).where(col(Cohort.code) == code)).first()


def list_cohorts(db: Session, track: str | None = None) -> list[Cohort]:
    query = select(Cohort).order_by(col(Cohort.track), col(Cohort.starts_at), col(Cohort.id))
    if track:
        query = query.where(col(Cohort.track) == track)
    return list(db.exec(query).all())


def on_sale_cohorts(db: Session, track: str, now: datetime) -> list[Cohort]:
    """A track's cohorts on sale now, the earliest start first."""
    return list(
        db.exec(
            select(Cohort)
            .where(col(Cohort.track) == track)
            .where(col(Cohort.state) == CohortState.ON_SALE)
            .where(col(Cohort.sales_open_at) <= now)
            .where(sa.or_(col(Cohort.sales_close_at).is_(None), col(Cohort.sales_close_at) > now))
            .order_by(col(Cohort.starts_at), col(Cohort.id))
        ).all()
    )


def expired_unswept(db: Session, cohort_id: int, now: datetime) -> int:
    """Checkout holds past their expiry the ledger still counts (released at the next move)."""
    return int(
        db.exec(
            select(func.count())
            .select_from(SeatHold)
            .where(col(SeatHold.cohort_id) == cohort_id)
            .where(col(SeatHold.state) == SeatState.HELD)
            .where(col(SeatHold.waitlist_entry_id).is_(None))
            .where(col(SeatHold.expires_at) <= now)
        ).one()
    )


def waiting_count(db: Session, cohort_id: int) -> int:
    return int(
        db.exec(
            select(func.count())
            .select_from(WaitlistEntry)
            .where(col(WaitlistEntry.cohort_id) == cohort_id)
            .where(col(WaitlistEntry.state) == WaitlistState.WAITING)
        ).one()
    )


def release_expired_holds(db: Session, cohort_id: int, now: datetime) -> list[SeatHold]:
    """Checkout holds past their expiry give their seats back. Call with the cohort locked."""
    holds = list(
        db.exec(
            select(SeatHold)
            .where(col(SeatHold.cohort_id) == cohort_id)
            .where(col(SeatHold.state) == SeatState.HELD)
            .where(col(SeatHold.waitlist_entry_id).is_(None))
            .where(col(SeatHold.expires_at) <= now)
        ).all()
    )
    for hold in holds:
        release_hold(db, hold, "expired", now)
    return holds


def release_hold(db: Session, hold: SeatHold, reason: str, now: datetime) -> bool:
    """A held or taken seat given back; False when it was not (already released)."""
    was = hold.state
    result = db.execute(
        sa.update(SeatHold)
        .where(col(SeatHold.id) == hold.id)
        .where(col(SeatHold.state) == was)
        .where(col(SeatHold.state) != SeatState.RELEASED)
        .values(state=SeatState.RELEASED, release_reason=reason, updated_at=now)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    values = (
        {"held": col(Cohort.held) - 1}
        if was == SeatState.HELD
        else {"taken": col(Cohort.taken) - 1}
    )
    db.execute(sa.update(Cohort).where(col(Cohort.id) == hold.cohort_id).values(values))
    hold.state, hold.release_reason, hold.updated_at = SeatState.RELEASED, reason, now
    return True


def take_hold(db: Session, cohort_id: int, *, public: bool) -> bool:
    """One more seat held, only if one is free (and, for `public` checkouts, nobody waits on
    the waitlist: released seats go to it first)."""
    query = (
        sa.update(Cohort)
        .where(col(Cohort.id) == cohort_id)
        .where(col(Cohort.held) + col(Cohort.taken) < col(Cohort.size))
    )
    if public:
        query = query.where(
            ~sa.exists()
            .where(col(WaitlistEntry.cohort_id) == cohort_id)
            .where(col(WaitlistEntry.state) == WaitlistState.WAITING)
        )
    result = db.execute(query.values(held=col(Cohort.held) + 1))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def take_first_hold(db: Session, track: str, now: datetime) -> tuple[int, str] | None:
    """The fast path of a public checkout, in one statement: a seat held in the track's
    first cohort on sale with one free and nobody waiting. The outer conditions repeat the
    seat rule, so a concurrent change to the chosen row is checked again (PostgreSQL
    re-reads the row it waited for)."""
    first = (
        sa.select(col(Cohort.id))
        .where(col(Cohort.track) == track)
        .where(col(Cohort.state) == CohortState.ON_SALE)
        .where(col(Cohort.sales_open_at) <= now)
        .where(sa.or_(col(Cohort.sales_close_at).is_(None), col(Cohort.sales_close_at) > now))
        .where(col(Cohort.held) + col(Cohort.taken) < col(Cohort.size))
        .where(
            ~sa.exists()
            .where(col(WaitlistEntry.cohort_id) == col(Cohort.id))
            .where(col(WaitlistEntry.state) == WaitlistState.WAITING)
        )
        .order_by(col(Cohort.starts_at), col(Cohort.id))
        .limit(1)
        .scalar_subquery()
    )
    row = db.execute(
        sa.update(Cohort)
        .where(col(Cohort.id) == first)
        .where(col(Cohort.held) + col(Cohort.taken) < col(Cohort.size))
        .values(held=col(Cohort.held) + 1)
        .returning(col(Cohort.id), col(Cohort.code))
    ).first()
    return (int(row[0]), str(row[1])) if row is not None else None


def take_free_seat(db: Session, cohort_id: int) -> bool:
    """A paid seat straight from the free ones (a payment whose hold was released)."""
    result = db.execute(
        sa.update(Cohort)
        .where(col(Cohort.id) == cohort_id)
        .where(col(Cohort.held) + col(Cohort.taken) < col(Cohort.size))
        .values(taken=col(Cohort.taken) + 1)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def convert_hold(db: Session, hold: SeatHold, now: datetime) -> bool:
    """A held seat becomes the payment's seat; False when the hold is not held any more."""
    result = db.execute(
        sa.update(SeatHold)
        .where(col(SeatHold.id) == hold.id)
        .where(col(SeatHold.state) == SeatState.HELD)
        .values(state=SeatState.TAKEN, updated_at=now)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    db.execute(
        sa.update(Cohort)
        .where(col(Cohort.id) == hold.cohort_id)
        .values(held=col(Cohort.held) - 1, taken=col(Cohort.taken) + 1)
    )
    hold.state = SeatState.TAKEN
    return True


def hold_for_session(db: Session, checkout_session_id: str) -> SeatHold | None:
    return db.exec(
        select(SeatHold)
        .where(col(SeatHold.checkout_session_id) == checkout_session_id)
        .with_for_update()
    ).first()


def hold_of_entry(db: Session, entry_id: int) -> SeatHold | None:
    return db.exec(
        select(SeatHold)
        .where(col(SeatHold.waitlist_entry_id) == entry_id)
        .where(col(SeatHold.state) == SeatState.HELD)
    ).first()


def ended_seats(db: Session, cohort_id: int) -> list[SeatHold]:
    """Taken seats whose enrollment's access ended (refund, cancel, dispute, duplicate)."""
    return list(
        db.exec(
            select(SeatHold)
            .join(
                Enrollment, col(Enrollment.checkout_session_id) == col(SeatHold.checkout_session_id)
            )
            .where(col(SeatHold.cohort_id) == cohort_id)
            .where(col(SeatHold.state) == SeatState.TAKEN)
            .where(col(Enrollment.status).in_(ACCESS_ENDED_STATUSES))
        ).all()
    )


def expired_offers(db: Session, cohort_id: int, now: datetime) -> list[WaitlistEntry]:
    return list(
        db.exec(
            select(WaitlistEntry)
            .where(col(WaitlistEntry.cohort_id) == cohort_id)
            .where(col(WaitlistEntry.state) == WaitlistState.OFFERED)
            .where(col(WaitlistEntry.offer_expires_at) <= now)
        ).all()
    )


def next_waiting(db: Session, cohort_id: int, limit: int) -> list[WaitlistEntry]:
    return list(
        db.exec(
            select(WaitlistEntry)
            .where(col(WaitlistEntry.cohort_id) == cohort_id)
            .where(col(WaitlistEntry.state) == WaitlistState.WAITING)
            .order_by(col(WaitlistEntry.position))
            .limit(limit)
        ).all()
    )


def entry_by_offer_token(db: Session, token_hash: str) -> WaitlistEntry | None:
    return db.exec(
        select(WaitlistEntry).where(col(WaitlistEntry.offer_token_hash) == token_hash)
    ).first()


def entry_by_email(db: Session, cohort_id: int, email: str) -> WaitlistEntry | None:
    return db.exec(
        select(WaitlistEntry)
        .where(col(WaitlistEntry.cohort_id) == cohort_id)
        .where(col(WaitlistEntry.email) == email)
    ).first()


def next_position(db: Session, cohort_id: int) -> int:
    last = db.exec(
        select(func.max(WaitlistEntry.position)).where(col(WaitlistEntry.cohort_id) == cohort_id)
    ).one()
    return int(last or 0) + 1


def waiting_ahead(db: Session, entry: WaitlistEntry) -> int:
    """The entry's place in the queue now: the people still waiting before it, plus one."""
    return 1 + int(
        db.exec(
            select(func.count())
            .select_from(WaitlistEntry)
            .where(col(WaitlistEntry.cohort_id) == entry.cohort_id)
            .where(col(WaitlistEntry.state) == WaitlistState.WAITING)
            .where(col(WaitlistEntry.position) < entry.position)
        ).one()
    )


def ledger_counts(db: Session, cohort_id: int) -> dict[str, int]:
    """What the rows say, to check the counters against (`onramp-support cohort list`)."""
    rows = db.exec(
        select(SeatHold.state, func.count())
        .where(col(SeatHold.cohort_id) == cohort_id)
        .group_by(col(SeatHold.state))
    ).all()
    counts = {state: int(n) for state, n in rows}
    return {s: counts.get(s, 0) for s in SeatState}


def cohorts_with_activity(db: Session) -> list[int]:
    """Cohorts the sweep must look at: a hold, a taken seat or someone on the waitlist."""
    held = select(SeatHold.cohort_id).where(
        col(SeatHold.state).in_((SeatState.HELD, SeatState.TAKEN))
    )
    waiting = select(WaitlistEntry.cohort_id).where(
        col(WaitlistEntry.state).in_((WaitlistState.WAITING, WaitlistState.OFFERED))
    )
    ids = db.exec(select(Cohort.id).where(col(Cohort.id).in_(held.union(waiting)))).all()
    return [int(i) for i in ids if i is not None]


def touch(obj: Cohort | WaitlistEntry) -> None:
    obj.updated_at = utcnow()
