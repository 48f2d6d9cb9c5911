"""What the public port serves besides the product. In development /docs is a working
Swagger UI: every script and stylesheet it loads is same-origin, served, and allowed by the
page's own Content-Security-Policy, and nothing inline needs an exception. In production
neither /docs, /redoc, /openapi.json nor /metrics is served there; the API's metrics are on
the private metrics port. Checked over HTTP, without a browser."""

import socket
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx

from api.main import create_app
from core.settings import Settings
from sandbox.server import BackgroundServer
from tests.utils.helpers import free_port, production_settings


class PageAssets(HTMLParser):
    """The resources a page makes the browser load or run."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.inline_scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.icons: list[str] = []
        self.inline_styles = 0
        self.data: dict[str, str] = {}
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if "style" in a or tag == "style":
            self.inline_styles += 1
        self.data.update({k: v for k, v in a.items() if k.startswith("data-")})
        if tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"])
            else:
                self._in_script = True
        elif tag == "link" and "stylesheet" in a.get("rel", "").split():
            self.stylesheets.append(a["href"])
        elif tag == "link" and "icon" in a.get("rel", "").split():
            self.icons.append(a["href"])

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def policy(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def allows_same_origin(csp: dict[str, list[str]], directive: str) -> bool:
    sources = csp.get(directive, csp.get("default-src", []))
    return "'self'" in sources or "*" in sources


def same_origin(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and url.startswith("/")


def asgi(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")  # type: ignore[arg-type]


async def test_docs_in_development_load_only_what_their_policy_allows() -> None:
    settings = Settings(_env_file=None, app_env="development")  # type: ignore[call-arg]
    async with asgi(create_app(settings)) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = policy(page.headers["content-security-policy"])
        assets = PageAssets()
        assets.feed(page.text)

        assert assets.scripts and assets.stylesheets
        # No inline code or styling: the policy grants neither 'unsafe-inline' nor hashes.
        assert assets.inline_scripts == [] and assets.inline_styles == 0
        for directive, urls, kind in (
            ("script-src", assets.scripts, "javascript"),
            ("style-src", assets.stylesheets, "text/css"),
            ("img-src", assets.icons, "image/"),
        ):
            assert allows_same_origin(csp, directive), directive
            for url in urls:
                assert same_origin(url), url
                served = await client.get(url)
                assert served.status_code == 200, url
                assert kind in served.headers["content-type"], url
        bundle = await client.get(assets.scripts[0])
        assert "SwaggerUIBundle" in bundle.text
        start = await client.get(assets.scripts[-1])
        assert "SwaggerUIBundle(" in start.text and "openapiUrl" in start.text

        # What Swagger UI then fetches: the schema, same-origin, under connect-src.
        schema_url = assets.data["data-openapi-url"]
        assert same_origin(schema_url) and allows_same_origin(csp, "connect-src")
        schema = await client.get(schema_url)
        assert schema.status_code == 200
        assert "/api/payments/verify-session/" in schema.json()["paths"]
        assert (await client.get("/metrics")).status_code == 200


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_production_serves_no_docs_schema_or_metrics_publicly() -> None:
    metrics_port = free_port()
    settings = production_settings(
        port=free_port(), metrics_host="127.0.0.1", api_metrics_port=metrics_port
    )
    app = create_app(settings)
    async with asgi(app) as client:
        for path in (
            "/docs",
            "/docs/swagger-ui/swagger-ui-bundle.js",
            "/redoc",
            "/openapi.json",
            "/metrics",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "onramp_" not in response.text and "openapi" not in response.text, path
        assert (await client.get("/static/app.css")).status_code == 200  # the pages still work

    with BackgroundServer(app, port=settings.port) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{server.url}/metrics")).status_code == 404
            private = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert private.status_code == 200
        assert "onramp_http_request_seconds" in private.text
    assert not port_open(metrics_port)  # stopped with the app
