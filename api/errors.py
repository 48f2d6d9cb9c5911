"""Expected errors carry their HTTP status; one set of handlers renders every error as JSON."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from core.errors import AppError, NotFound, Unavailable

__all__ = ["AppError", "NotFound", "Unavailable"]

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer of the API: a short kind for programs, a sentence for people.

    Some errors add details: the request's invalid `fields`, the one `field` a rule refused,
    `retry_after` seconds on a 429."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
    fields: list[FieldProblem] | None = None
    field: str | None = None
    retry_after: int | None = None


def _body(error: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": error, "message": message, **extra}


def _allowed_methods(request: Request) -> str:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] == Match.PARTIAL:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            _body(exc.error, exc.message, **exc.extra), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            fields.append({"field": loc, "message": err.get("msg", "invalid")})
        message = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields)
        return JSONResponse(_body("Invalid request", message, fields=fields), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the first route of the path; a path served by several
            # routes (GET and POST /api/staff/cohorts) allows all of theirs.
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return JSONResponse(
            _body(str(exc.detail), str(exc.detail)), exc.status_code, headers=headers
        )

    @app.exception_handler(sa_exc.OperationalError)
    async def _database_down(request: Request, exc: sa_exc.OperationalError) -> JSONResponse:
        # Nothing was committed; Stripe and clients retry a 503.
        log.error("database unavailable on %s %s", request.method, request.url.path)
        return JSONResponse(
            _body("Service unavailable", "The database is unavailable; please retry shortly."),
            503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            _body("Internal error", "Something went wrong on our side; please retry."), 500
        )
