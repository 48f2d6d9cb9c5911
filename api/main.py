"""The FastAPI application: JSON API and student pages, built from settings at startup."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.auth.endpoints import router as auth_router
from api.canonical import CanonicalOriginMiddleware
from api.devtools import router as devtools_router
from api.docs import install_docs
from api.errors import install_error_handlers
from api.health import router as health_router
from api.metrics import RequestMetricsMiddleware, serve_private_metrics
from api.metrics import router as metrics_router
from api.middleware import install_security
from api.openapi import install_openapi
from api.pages.endpoints import not_found_router
from api.pages.endpoints import router as pages_router
from api.pages.rendering import STATIC_DIR
from api.payments.endpoints import router as payments_router
from api.payments.progress import ProgressHub, source_for
from api.payments.verify import FinishedStates, Verification, read_enrollment
from api.staff.endpoints import pages_router as staff_pages_router
from api.staff.endpoints import router as staff_router
from core.db import make_engine
from core.logging import configure_logging
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings, get_settings
from core.temporal import connect


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = app.state.settings
        app.state.engine = make_engine(s.database_url)
        app.state.stripe = StripeGateway(s)
        # Lazy: the API starts (and answers 503 to webhooks) while Temporal is down.
        app.state.temporal = await connect(s, lazy=True)

        async def read(session_id: str) -> Verification:
            return await read_enrollment(
                app.state.temporal,
                app.state.stripe,
                s,
                app.state.engine,
                session_id,
                app.state.finished_states,
            )

        hub = app.state.progress_hub = ProgressHub(read, s, source_for(app.state.engine, s))
        await hub.start()
        metrics_server = serve_private_metrics(s) if production else None
        yield
        await hub.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        app.state.engine.dispose()

    settings = settings or get_settings()
    settings.check_production()
    # Production serves neither the API docs nor /metrics on the public port.
    production = settings.app_env == "production"
    app = FastAPI(
        title="Onramp",
        summary="Payment-first enrollment: Stripe Checkout to a ready workspace.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=None if production else "/openapi.json",
        docs_url=None,  # api.docs serves Swagger UI without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.finished_states = FinishedStates()  # verify-session's completed runs
    install_error_handlers(app)
    install_security(app)
    app.add_middleware(CanonicalOriginMiddleware, public_base_url=settings.public_base_url)
    app.add_middleware(RequestMetricsMiddleware)  # outermost: the whole server-side time
    app.include_router(health_router)
    app.include_router(payments_router)
    app.include_router(auth_router)
    app.include_router(staff_router)
    app.include_router(staff_pages_router)
    if not production:
        app.include_router(metrics_router)
        install_docs(app)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(devtools_router)
    # Keep last: a human 404 page for any other page path (API paths keep JSON 404s).
    app.include_router(not_found_router)
    install_openapi(app)
    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory api.main:app_factory`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
