"""Where development stand-in tools link to: a page that says plainly no real server is set."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.pages.rendering import error_page, render
from core.tracks import (
    TOOL_CODESERVER,
    TOOL_JUPYTER,
    TOOL_LABELS,
    TOOL_POSTGRES,
    TOOL_PREFECT,
    TOOL_SUPERSET,
)

router = APIRouter(include_in_schema=False)

SETTING = {
    TOOL_POSTGRES: "LEARNING_DATABASE_URL",
    TOOL_SUPERSET: "SUPERSET_URL",
    TOOL_PREFECT: "PREFECT_API_URL",
    TOOL_JUPYTER: "DOCKER_HOST",
    TOOL_CODESERVER: "DOCKER_HOST",
}


@router.get("/dev-tools/{tool}/{username}")
async def development_tool(request: Request, tool: str, username: str) -> HTMLResponse:
    if tool not in TOOL_LABELS or request.app.state.settings.app_env == "production":
        return error_page(request, 404)
    label = TOOL_LABELS[tool]
    if tool == TOOL_SUPERSET:
        return render(
            request,
            "error.html",
            heading="Superset is off in this development setup",
            message=(
                f"This link is a development stand-in (SUPERSET_URL is empty): {username} has "
                "no Superset account yet. "
                "Superset is an 800 MB install, so `make dev` starts it only when asked: "
                "run `DEV_SUPERSET=true make dev` and this link opens "
                f"{username}'s own Superset. Everything else in this enrollment is unaffected."
            ),
            status=200,
        )
    return render(
        request,
        "error.html",
        heading=f"{label}: development stand-in",
        message=(
            f"No real {label} server is configured here ({SETTING[tool]} is empty), so "
            f"{username}'s {label} exists only as a placeholder. With the setting in place "
            f"this link opens the student's own {label}."
        ),
        status=200,
    )
