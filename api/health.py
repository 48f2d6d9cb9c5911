"""Liveness of the API's dependencies: the database and Temporal."""

from datetime import timedelta
from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str  # "ok", or "error: <kind>"
    temporal: str


@router.get(
    "/api/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is down (`degraded`)"}},
)
async def health(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}

    def ping_db() -> None:
        with request.app.state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    try:
        await run_in_threadpool(ping_db)
        checks["database"] = "ok"
    except Exception as err:  # noqa: BLE001 (any failure means unhealthy)
        checks["database"] = f"error: {type(err).__name__}"
    try:
        await request.app.state.temporal.service_client.check_health(timeout=timedelta(seconds=2))
        checks["temporal"] = "ok"
    except Exception as err:  # noqa: BLE001
        checks["temporal"] = f"error: {type(err).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", **checks}, 200 if ok else 503)
