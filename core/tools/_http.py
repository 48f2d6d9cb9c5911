"""Shared HTTP plumbing for the REST-backed adapters: one place that classifies failures.

Transient: the server could not be reached, timed out, or answered 5xx/408/429. Permanent:
any other 4xx (bad credentials, a request the server will never accept). Messages name the
tool, method, path and status only: bodies may echo passwords (Superset's user PUT does).
"""

import logging
from typing import Any

import httpx

from core.tools.base import ToolPermanentError, ToolTransientError

logger = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 425, 429})


def is_transient_status(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUSES


def error_for(tool: str, response: httpx.Response) -> ToolPermanentError | ToolTransientError:
    """The classified error for an unexpected response, without its body."""
    request = response.request
    text = f"{tool}: {request.method} {request.url.path} answered HTTP {response.status_code}"
    if is_transient_status(response.status_code):
        return ToolTransientError(text)
    return ToolPermanentError(text)


def request(
    client: httpx.Client,
    tool: str,
    method: str,
    path: str,
    *,
    ok: tuple[int, ...] = (200, 201, 204),
    **kwargs: Any,
) -> httpx.Response:
    """Send one request; return it when its status is in `ok`, else raise a classified error.

    Callers that treat some other status as an answer (404 = absent, 409 = exists) list it
    in `ok` and look at `status_code` themselves.
    """
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException as exc:
        raise ToolTransientError(f"{tool}: {method} {path} timed out") from exc
    except httpx.TransportError as exc:
        # Connection refused, reset, DNS: the server may come back.
        raise ToolTransientError(f"{tool}: {method} {path} failed: {type(exc).__name__}") from exc
    except httpx.InvalidURL as exc:
        raise ToolPermanentError(f"{tool}: invalid URL for {method} {path}") from exc
    if response.status_code not in ok:
        error = error_for(tool, response)
        logger.warning("%s", error)
        raise error
    return response


def json_of(tool: str, response: httpx.Response) -> Any:
    """The decoded body; a proxy's HTML error page under a 200 is treated as transient."""
    try:
        return response.json()
    except ValueError as exc:
        raise ToolTransientError(
            f"{tool}: {response.request.method} {response.request.url.path} returned non-JSON"
        ) from exc


def rison_string(value: str) -> str:
    """Quote a string for a Flask-AppBuilder `q=` (Rison) filter."""
    return "'" + value.replace("!", "!!").replace("'", "!'") + "'"
