"""Staff-only HTTP routes: the support actions of `onramp-support`, and the funnel.

Every route depends on `StaffUser` (401 without a login, 403 for students). The actor in
the audit log is `staff:<email>` of the logged-in staff member.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.auth.deps import StaffUser
from api.deps import SettingsDep
from api.openapi import GUARDED, error_responses, link
from api.pages.rendering import PageRoute
from api.payments.schemas import COHORT_CODE
from api.staff.schemas import (
    CancelRequest,
    CohortCreate,
    CohortEdit,
    GrantCreate,
    Reason,
    ReconcileRequest,
    RetryDecision,
    ToolDecision,
)
from core.cohorts.service import CohortChange
from core.models import User
from core.tracks import TrackCode
from support import cohorts as support_cohorts
from support.funnel import compute_funnel
from support.service import ListFilters, SupportService, parse_since

TEMPLATES = Path(__file__).parent / "templates"
_pages = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())

router = APIRouter(prefix="/api/staff", tags=["staff"])
# Page errors (401, 403) render as the site's HTML error pages, not JSON.
pages_router = APIRouter(
    prefix="/staff", tags=["staff"], include_in_schema=False, route_class=PageRoute
)

SessionId = Annotated[str, PathParam(min_length=3, max_length=255)]
# Every route: 401 without a login, 403 for a student (or a cookie session without CSRF).
READ = (400, 401, 403, 503)
CHANGE = (*GUARDED, 401, 403, 503)
ENROLLMENT = "/api/staff/enrollments/{session_id}"
GRANTED = {"session_id": "$response.body#/checkout_session_id"}
GRANT_LINKS = {
    "ShowEnrollment": link(ENROLLMENT, "get", "The granted enrollment", GRANTED),
    **{
        f"{action.title().replace('-', '')}Enrollment": link(
            f"{ENROLLMENT}/{action}", "post", f"{action} the granted enrollment", GRANTED
        )
        for action in ("retry", "skip", "cancel", "replay", "resend-welcome", "revoke")
    },
}


async def get_support(request: Request) -> SupportService:
    state = request.app.state
    return SupportService(state.settings, state.engine, state.temporal, state.stripe)


SupportDep = Annotated[SupportService, Depends(get_support)]


def actor_of(staff: User) -> str:
    return f"staff:{staff.email}"


@router.get("/enrollments", responses=error_responses(*READ))
async def list_enrollments(
    staff: StaffUser,
    support: SupportDep,
    status: str | None = Query(default=None, max_length=32),
    email: str | None = Query(default=None, max_length=320),
    track: str | None = Query(default=None, max_length=8),
    needs_attention: bool | None = None,
    # Read as text: pydantic's `date` would also take a number of seconds ("0").
    since: str | None = Query(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Enrollments created on or after this day (UTC), YYYY-MM-DD",
        json_schema_extra={"format": "date"},
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    filters = ListFilters(status, email, track, needs_attention, parse_since(since), limit)
    return await support.list_enrollments(filters)


@router.get("/enrollments/{session_id}", responses=error_responses(*READ, 404))
async def show_enrollment(
    session_id: SessionId, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.show(session_id)


@router.post("/enrollments/{session_id}/retry", responses=error_responses(*CHANGE, 404, 409))
async def retry_tool(
    session_id: SessionId, body: RetryDecision, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.retry(session_id, body.tool, body.reason, actor_of(staff))


@router.post("/enrollments/{session_id}/skip", responses=error_responses(*CHANGE, 404, 409))
async def skip_tool(
    session_id: SessionId, body: ToolDecision, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.skip(session_id, body.tool, body.reason, actor_of(staff))


@router.post("/enrollments/{session_id}/cancel", responses=error_responses(*CHANGE, 404, 409))
async def cancel_enrollment(
    session_id: SessionId, body: CancelRequest, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.cancel(session_id, body.reason, actor_of(staff), refund=body.refund)


@router.post("/enrollments/{session_id}/replay", responses=error_responses(*CHANGE, 404, 409, 502))
async def replay_enrollment(
    session_id: SessionId, body: Reason, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.replay(session_id, body.reason, actor_of(staff))


@router.post(
    "/enrollments/{session_id}/resend-welcome", responses=error_responses(*CHANGE, 404, 409)
)
async def resend_welcome(
    session_id: SessionId, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.resend_welcome(session_id, actor_of(staff))


@router.post("/enrollments/{session_id}/revoke", responses=error_responses(*CHANGE, 404, 409))
async def revoke_enrollment(
    session_id: SessionId, body: Reason, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.revoke(session_id, body.reason, actor_of(staff))


@router.post(
    "/grants",
    status_code=201,
    responses={201: {"links": GRANT_LINKS}, **error_responses(*CHANGE, 409)},
)
async def grant_enrollment(
    body: GrantCreate, staff: StaffUser, support: SupportDep
) -> dict[str, Any]:
    return await support.grant(body.email, body.name, body.track, body.reason, actor_of(staff))


@router.post("/reconcile", responses=error_responses(*CHANGE))
async def reconcile_now(
    staff: StaffUser, support: SupportDep, body: ReconcileRequest | None = None
) -> dict[str, Any]:
    return await support.reconcile(actor_of(staff), body.lookback_hours if body else None)


def _aware(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


@router.get("/cohorts", responses=error_responses(*READ))
async def list_cohorts(
    request: Request, staff: StaffUser, track: TrackCode | None = None
) -> list[dict[str, Any]]:
    """Every cohort with its seats: taken, held, left, waiting, and whether the ledger's
    counters equal its rows."""
    return await run_in_threadpool(support_cohorts.list_cohorts, request.app.state.engine, track)


@router.post("/cohorts", status_code=201, responses=error_responses(*CHANGE, 409))
async def create_cohort(request: Request, staff: StaffUser, body: CohortCreate) -> dict[str, Any]:
    change = CohortChange(
        code=body.code,
        track=body.track,
        starts_at=_aware(body.starts_at),
        size=body.size,
        sales_open_at=_aware(body.sales_open_at),
        sales_close_at=_aware(body.sales_close_at),
        state=body.state,
    )
    return await run_in_threadpool(
        support_cohorts.create_cohort, request.app.state.engine, change, actor_of(staff)
    )


@router.patch("/cohorts/{code}", responses=error_responses(*CHANGE, 404, 409))
async def edit_cohort(
    request: Request,
    staff: StaffUser,
    body: CohortEdit,
    code: Annotated[str, PathParam(pattern=COHORT_CODE)],
) -> dict[str, Any]:
    change = CohortChange(
        starts_at=_aware(body.starts_at),
        size=body.size,
        sales_open_at=_aware(body.sales_open_at),
        sales_close_at=_aware(body.sales_close_at),
        clear_sales_close=body.clear_sales_close,
        state=body.state,
    )
    return await run_in_threadpool(
        support_cohorts.edit_cohort, request.app.state.engine, code, change, actor_of(staff)
    )


@router.get("/funnel", responses=error_responses(*READ))
async def funnel_data(
    request: Request,
    staff: StaffUser,
    settings: SettingsDep,
    days: int | None = Query(default=None, ge=1, le=366),
) -> dict[str, Any]:
    return await run_in_threadpool(
        compute_funnel, request.app.state.engine, days or settings.funnel_days
    )


@pages_router.get("/funnel", response_class=HTMLResponse)
async def funnel_page(
    request: Request,
    staff: StaffUser,
    settings: SettingsDep,
    days: int | None = Query(default=None, ge=1, le=366),
) -> HTMLResponse:
    data = await run_in_threadpool(
        compute_funnel, request.app.state.engine, days or settings.funnel_days
    )
    html = _pages.get_template("funnel.html").render(
        data=data, staff=staff, temporal_ui_url=settings.temporal_ui_url
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@pages_router.get("/staff.css")
async def staff_css() -> Response:
    """The page's own styles: the CSP allows no inline style."""
    return Response((TEMPLATES / "staff.css").read_text(), media_type="text/css")
