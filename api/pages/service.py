"""Page-only rules: form checks with human messages, the dashboard's view, tool credentials."""

import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import InvalidToken
from pydantic import ValidationError
from sqlmodel import Session

from api.errors import AppError, NotFound
from api.payments.schemas import CheckoutCreate
from core import repository as repo
from core.cohorts import repository as cohorts_repo
from core.cohorts import service as cohorts
from core.contracts import IN_PROGRESS_STATUSES, EnrollmentStatus, ToolStatus
from core.crypto import SecretBox, token_hash
from core.models import Enrollment, ToolAccountRecord, User, WaitlistState, utcnow
from core.settings import Settings
from core.tracks import ALL_TOOLS, TOOL_LABELS, TRACKS, Track

log = logging.getLogger(__name__)

CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}
NAME_MAX = 100


def price_label(track: Track) -> str:
    amount = track.price_cents / 100
    number = f"{amount:,.0f}" if track.price_cents % 100 == 0 else f"{amount:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(track.currency)
    return f"{symbol}{number}" if symbol else f"{number} {track.currency.upper()}"


@dataclass
class TrackCard:
    code: str
    title: str
    price: str
    summary: str
    includes: tuple[str, ...]
    tools: list[str]


def track_cards() -> list[TrackCard]:
    return [
        TrackCard(
            code=t.code,
            title=t.title,
            price=price_label(t),
            summary=t.summary,
            includes=t.includes,
            tools=[TOOL_LABELS[tool] for tool in t.tools],
        )
        for t in TRACKS.values()
    ]


@dataclass
class CohortCard:
    """The next cohort of a track, as its get-started card shows it."""

    code: str
    starts: str  # "11 January 2027"
    seats_left: int
    sold_out: bool
    on_sale: bool


@dataclass
class OfferView:
    """A waitlist offer the personal link carries (prefills the form, pays the held seat)."""

    token: str
    email: str
    name: str
    track: str
    cohort: str
    until: str
    valid: bool
    problem: str = ""


def cohort_cards(engine: sa.Engine) -> dict[str, CohortCard]:
    """Blocking (one read per track): call it from a thread."""
    with Session(engine) as db:
        views = cohorts.next_cohorts(db)
    return {
        track: CohortCard(
            code=v.code,
            starts=f"{v.starts_at.day} {v.starts_at:%B %Y}",
            seats_left=v.seats_left,
            sold_out=v.state == "sold_out",
            on_sale=v.on_sale,
        )
        for track, v in views.items()
    }


def waitlist_message(joined: cohorts.WaitlistJoined) -> str:
    if not joined.created:
        return (
            f"You're already on the waitlist for cohort {joined.cohort} (place {joined.position})."
        )
    return (
        f"You're on the waitlist for cohort {joined.cohort}, place {joined.position}. We've "
        "emailed you a confirmation; when a seat frees up we'll email you a link to take it."
    )


def offer_view(engine: sa.Engine, token: str) -> OfferView | None:
    """The offer a link's token names, or None for a token that names none."""
    with Session(engine) as db:
        entry = cohorts_repo.entry_by_offer_token(db, token_hash(token))
        if entry is None:
            return None
        cohort = cohorts_repo.get_cohort(db, entry.cohort_id)
        assert cohort is not None
        expires = entry.offer_expires_at
        valid = entry.state == WaitlistState.OFFERED and expires is not None and expires > utcnow()
        problem = ""
        if entry.state == WaitlistState.CLAIMED:
            problem = "You've already paid for this seat."
        elif not valid:
            problem = "This offer has run out: the seat went to the next person in line."
        return OfferView(
            token=token,
            email=entry.email,
            name=entry.name,
            track=cohort.track,
            cohort=cohort.code,
            until=f"{expires:%d %B %Y, %H:%M} UTC" if expires else "",
            valid=valid,
            problem=problem,
        )


def safe_next(target: str | None, default: str = "/student/dashboard") -> str:
    """Only same-site paths: never `//host`, `/\\host` or a full URL (open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 0x21 or c == "\\" for c in target):
        return default
    return target


# ---- get started (the no-JavaScript form) --------------------------------------------


@dataclass
class CheckoutForm:
    email: str = ""
    name: str = ""
    track: str = ""
    offer: str = ""
    errors: dict[str, str] = field(default_factory=dict)


def parse_checkout_form(data: dict[str, str]) -> tuple[CheckoutForm, CheckoutCreate | None]:
    """The form's values, human messages per field, and the API body when all is valid."""
    form = CheckoutForm(
        email=data.get("email", "").strip()[:320],
        name=data.get("name", "")[:200],
        track=data.get("track", "").strip(),
        offer=data.get("offer", "").strip()[:100],
    )
    if not form.email:
        form.errors["email"] = "Enter your email address."
    if not form.name.strip():
        form.errors["name"] = "Enter your name."
    elif len(" ".join(form.name.split())) > NAME_MAX:
        form.errors["name"] = f"Use at most {NAME_MAX} characters."
    if form.track and form.track not in TRACKS:
        form.errors["track"] = "Choose a track."
    try:
        body = CheckoutCreate(
            email=form.email,
            name=form.name,
            track=form.track,  # type: ignore[arg-type]
            offer=form.offer or None,
        )
    except ValidationError as err:
        for problem in err.errors():
            where = str(problem["loc"][0]) if problem["loc"] else ""
            if where == "email":
                form.errors.setdefault(
                    "email", "Enter a valid email address, like name@example.com."
                )
            elif where == "name":
                form.errors.setdefault("name", "Use letters, spaces and punctuation only.")
            elif where == "track" and form.track:
                form.errors.setdefault("track", "Choose a track.")
        return form, None
    if form.errors:
        return form, None
    form.email, form.name = body.email, body.name
    return form, body


# ---- dashboard -----------------------------------------------------------------------

TOOL_STATUS_TEXT = {
    ToolStatus.READY: "Ready",
    ToolStatus.PENDING: "Being set up",
    "failed": "Needs attention: our team is on it",
    "skipped": "Not available: our team will contact you",
    ToolStatus.DISABLED: "Disabled",
    ToolStatus.ABSENT: "Not set up",
}
# The enrollments a student's dashboard lists (in progress ones with their progress).
SHOWN = (*IN_PROGRESS_STATUSES, EnrollmentStatus.READY, EnrollmentStatus.DUPLICATE)


@dataclass
class ToolView:
    tool: str
    label: str
    status: str
    status_text: str
    url: str
    development: bool
    has_credentials: bool
    credentials: dict[str, Any] | None = None

    @property
    def is_web_link(self) -> bool:
        # Only http(s) becomes a link; a postgresql:// address is shown as text.
        return self.url.startswith(("https://", "http://"))


@dataclass
class ProjectView:
    position: int
    title: str
    guide: str
    unlocked: bool


@dataclass
class TrackView:
    code: str
    title: str
    status: str
    checkout_session_id: str
    in_progress: bool
    needs_attention: bool
    tools: list[ToolView]
    projects: list[ProjectView]
    progress: dict[str, Any] | None = None


@dataclass
class Dashboard:
    name: str
    email: str
    tracks: list[TrackView]


def _tool_view(tool: str, record: ToolAccountRecord | None) -> ToolView:
    status = record.status if record else ToolStatus.PENDING
    return ToolView(
        tool=tool,
        label=TOOL_LABELS[tool],
        status=status,
        status_text=TOOL_STATUS_TEXT.get(status, status.capitalize()),
        url=record.url if record and status == ToolStatus.READY else "",
        development=bool(record and record.development),
        has_credentials=bool(record and status == ToolStatus.READY and record.secret_encrypted),
    )


def _latest_per_track(enrollments: list[Enrollment]) -> list[Enrollment]:
    by_track: dict[str, Enrollment] = {}
    for e in enrollments:  # newest first: keep the first shown enrollment of each track
        if e.status in SHOWN and e.track in TRACKS and e.track not in by_track:
            by_track[e.track] = e
    return sorted(by_track.values(), key=lambda e: e.id or 0)


def build_dashboard(db: Session, user: User) -> Dashboard:
    assert user.id is not None
    records = {r.tool: r for r in repo.list_tool_accounts(db, user.id)}
    unlocked = repo.unlocked_project_ids(db, user.id)
    tracks = []
    for enrollment in _latest_per_track(list(repo.list_user_enrollments(db, user.id))):
        track = TRACKS[enrollment.track]
        tracks.append(
            TrackView(
                code=track.code,
                title=track.title,
                status=enrollment.status,
                checkout_session_id=enrollment.checkout_session_id,
                in_progress=enrollment.status in IN_PROGRESS_STATUSES,
                needs_attention=enrollment.needs_attention
                or enrollment.status == EnrollmentStatus.DUPLICATE,
                tools=[_tool_view(t, records.get(t)) for t in track.tools],
                projects=[
                    ProjectView(p.position, p.title, p.guide, p.id in unlocked)
                    for p in repo.list_projects(db, track.code)
                ],
            )
        )
    return Dashboard(
        name=user.name,
        email=user.email,
        tracks=tracks,
    )


# ---- tool credentials ----------------------------------------------------------------


def tool_credentials(db: Session, settings: Settings, user: User, tool: str) -> dict[str, Any]:
    """The student's own login for one ready tool, decrypted on demand and audited."""
    assert user.id is not None
    record = repo.get_tool_account(db, user.id, tool) if tool in ALL_TOOLS else None
    if record is None or record.status != ToolStatus.READY or not record.secret_encrypted:
        raise NotFound("No credentials for this tool", error="Unknown tool")
    try:
        secret = SecretBox(settings.tool_secret_key).decrypt(record.secret_encrypted)
    except InvalidToken:
        log.error("tool secret of user %s for %s cannot be decrypted", user.id, tool)
        raise AppError(
            f"Your {TOOL_LABELS[tool]} password can't be shown right now; "
            f"write to {settings.support_email}.",
            status_code=409,
            error="Credentials unavailable",
        ) from None
    repo.add_audit(db, "credentials_revealed", actor="student", user_id=user.id, tool=tool)
    details = {k: str(v) for k, v in (record.details or {}).items() if k != "note"}
    return {
        "tool": tool,
        "label": TOOL_LABELS[tool],
        "url": record.url,
        "username": record.username or "",
        "password": secret,
        "development": record.development,
        "details": details,
    }
