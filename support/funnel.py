"""The enrollment funnel for staff: checkout created -> paid -> enrolled -> first login, the
payment success rate per day and track, provisioning time per tool (p50/p95), and per
cohort the seats (holds, expiries, seats left) and what became of them (recoveries,
waitlist joins, offers, conversions, payments that found the cohort full).

Computed from the enrollment rows and the audit log of the last N days. Grants (no
payment) are counted apart so they do not flatter the payment numbers.
"""

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from core.cohorts import repository as cohorts_repo
from core.cohorts import service as cohorts
from core.db import session_scope
from core.tracks import ALL_TOOLS, TRACKS
from support import repository as ops_repo

GRANT_PREFIX = "grant-"
LOGIN_ACTIONS = ("auto_login", "login")
STAGES = ("checkout_created", "paid", "enrolled", "first_login")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def compute_funnel(engine: sa.Engine, days: int, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    with session_scope(engine) as s:
        rows = ops_repo.enrollments_created_since(s, since)
        logins = ops_repo.audit_since(s, since, LOGIN_ACTIONS)
        steps = ops_repo.audit_since(s, since, ("enrolled", "tool_provisioned"))
        logged_in = {a.user_id for a in logins if a.user_id is not None}

        stages: dict[str, dict[str, int]] = {t: dict.fromkeys(STAGES, 0) for t in TRACKS}
        daily: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: {"checkouts": 0, "paid": 0}
        )
        grants = 0
        for e in rows:
            if e.checkout_session_id.startswith(GRANT_PREFIX):
                grants += 1
                continue
            track = stages.setdefault(e.track, dict.fromkeys(STAGES, 0))
            track["checkout_created"] += 1
            day = (e.created_at.date().isoformat(), e.track)
            daily[day]["checkouts"] += 1
            if e.paid_at is not None:
                track["paid"] += 1
                daily[day]["paid"] += 1
            if e.payment_verified:
                track["enrolled"] += 1
                if e.user_id in logged_in:
                    track["first_login"] += 1

        enrolled_at: dict[int, datetime] = {}
        durations: dict[str, list[float]] = defaultdict(list)
        seen: set[tuple[int, str]] = set()
        for a in steps:
            if a.enrollment_id is None:
                continue
            if a.action == "enrolled":
                enrolled_at.setdefault(a.enrollment_id, a.created_at)
                continue
            tool = str(a.details.get("tool"))
            # The first provisioning only: a reinstatement weeks later is not a duration.
            if a.enrollment_id in enrolled_at and (a.enrollment_id, tool) not in seen:
                seen.add((a.enrollment_id, tool))
                seconds = (a.created_at - enrolled_at[a.enrollment_id]).total_seconds()
                durations[tool].append(max(seconds, 0.0))

        seats = cohort_funnel(s, since)

    total = dict.fromkeys(STAGES, 0)
    for counts in stages.values():
        for stage in STAGES:
            total[stage] += counts[stage]
    return {
        "days": days,
        "since": since.isoformat(),
        "stages": list(STAGES),
        "total": total,
        "by_track": stages,
        "grants": grants,
        "payment_success": [
            {
                "day": day,
                "track": track,
                "checkouts": c["checkouts"],
                "paid": c["paid"],
                "rate": round(c["paid"] / c["checkouts"], 3) if c["checkouts"] else None,
            }
            for (day, track), c in sorted(daily.items(), reverse=True)
        ],
        "cohorts": seats,
        "provisioning": [
            {
                "tool": tool,
                "count": len(durations.get(tool, [])),
                "p50_seconds": percentile(durations.get(tool, []), 50),
                "p95_seconds": percentile(durations.get(tool, []), 95),
            }
            for tool in ALL_TOOLS
        ],
    }


COHORT_COUNTS = (
    "holds", "expiries", "recovery_emails", "recovered_paid", "waitlist_joins", "offers",
    "offers_claimed", "offers_passed", "sold_out_payments", "conversions",
)  # fmt: skip


def cohort_funnel(s: Session, since: datetime) -> list[dict[str, Any]]:
    """Per cohort: its seats now, and what happened to its holds and waitlist since then."""
    out = []
    for cohort in cohorts_repo.list_cohorts(s):
        assert cohort.id is not None
        v = cohorts.view(s, cohort)
        counts = ops_repo.cohort_counts(s, cohort.id, cohort.code, since)
        out.append(
            {
                "code": cohort.code,
                "track": cohort.track,
                "starts_at": cohort.starts_at.isoformat(),
                "state": v.state,
                "size": cohort.size,
                "taken": cohort.taken,
                "held": cohort.held,
                "seats_left": v.seats_left,
                "waiting": v.waiting,
                **{k: counts.get(k, 0) for k in COHORT_COUNTS},
            }
        )
    return out
