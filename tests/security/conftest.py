"""Fixtures of the security tests; their stack and helpers are in `tests/utils/security.py`."""

import io
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from core.logging import JsonFormatter
from core.settings import Settings
from tests.utils.stack import Stack


@pytest_asyncio.fixture
async def api(fresh: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A browser: keeps its cookies, like the one that pays."""
    async with fresh.http() as client:
        yield client


@pytest.fixture
def tune(fresh: Stack) -> Iterator[Callable[..., None]]:
    """Change the running app's settings for one test (the app reads them per request)."""
    saved: dict[str, Any] = {}

    def apply(**values: Any) -> None:
        for key, value in values.items():
            saved.setdefault(key, getattr(fresh.settings, key))
            setattr(fresh.settings, key, value)

    yield apply
    for key, value in saved.items():
        setattr(fresh.settings, key, value)


@pytest.fixture
def limits_on(tune: Callable[..., None]) -> Callable[..., None]:
    """Rate limits on, every limit off unless the test sets it."""
    tune(
        rate_limit_enabled=True,
        **{
            name: ""
            for name in Settings.model_fields
            if name.startswith("rate_limit_")
            and name not in ("rate_limit_enabled", "rate_limit_backend")
        },
    )
    return tune


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record of the process, formatted as production formats it (JSON, redacted)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    # As core.logging.configure_logging does in production: uvicorn through the root.
    watched = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    saved = (root.level, [(lg, lg.level, lg.propagate) for lg in watched])
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for lg in watched:
        lg.setLevel(logging.INFO)
        lg.propagate = True
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for lg, level, propagate in saved[1]:
            lg.setLevel(level)
            lg.propagate = propagate
