"""Development API docs: Swagger UI at /docs, with its files served by the app itself.

Swagger UI usually loads from a CDN and starts from an inline script; the site's CSP
(`script-src 'self'`) allows neither, so the page was blank. Here the bundle comes from the
`swagger-ui-bundle-v2` package and the start-up code from /static, under the same CSP as
every page. Production mounts none of this (nor /openapi.json): see `api.main`.
"""

from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from api.pages.rendering import static_url

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/swagger-ui"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API docs</title>
<link rel="icon" href="{favicon}">
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{bundle}"></script>
<script src="{start}"></script>
</body>
</html>
"""


def install_docs(app: FastAPI) -> None:
    """GET /docs and Swagger UI's files under /docs/swagger-ui/ (call only outside production)."""
    assert app.openapi_url, "the docs need the OpenAPI schema"
    html = PAGE.format(
        title=escape(app.title),
        favicon=static_url("favicon.svg"),
        css=f"{ASSETS_PATH}/swagger-ui.css",
        bundle=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        start=static_url("swagger-start.js"),
        openapi_url=escape(app.openapi_url),
    )

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(html)

    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
