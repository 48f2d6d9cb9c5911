"""The published OpenAPI document: the error answers each route declares, in the one JSON
error body, and the corrections to what FastAPI generates on its own."""

from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.errors import ErrorBody
from core.settings import Settings
from core.urls import redirect_pattern

ERROR_DESCRIPTIONS = {
    400: "Invalid request: a parameter or body field (`fields` names them), a JSON body "
    "that does not parse, nests too deep or is not UTF-8, or a rule of the operation",
    401: "Not logged in, or the credentials are wrong or expired (`WWW-Authenticate`)",
    403: "Logged in but not allowed: not staff, or a cookie session's CSRF check failed",
    404: "No such resource",
    409: "Not possible in the resource's current state",
    410: "Gone: the checkout expired before payment",
    413: "The body is larger than the API accepts",
    415: "The body is not JSON (Content-Type: application/json, UTF-8)",
    429: "Too many attempts from this address or for this email; see `Retry-After`",
    502: "The payment provider refused or failed the request",
    503: "A dependency (database, Temporal, Stripe) is unavailable; retry (`Retry-After`)",
}
RETRY_AFTER = {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {**RETRY_AFTER, "required": True}},
    503: {"Retry-After": RETRY_AFTER},
}
# RequestGuardMiddleware's answers to any POST under /api/ that carries a body.
GUARDED = (400, 413, 415)
FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
# Request fields that must be on an allowed origin (core.urls.is_allowed_redirect).
REDIRECT_FIELDS = {"CheckoutCreate": ("success_url", "cancel_url")}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these error statuses, each answered with `ErrorBody`."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        responses[status] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
        if status in ERROR_HEADERS:
            responses[status]["headers"] = ERROR_HEADERS[status]
    return responses


def link(path: str, method: str, description: str, parameters: dict[str, str]) -> dict[str, Any]:
    """An OpenAPI link from a response to the operation `method path` a client can call
    next, its `parameters` runtime expressions (`$response.body#/id`)."""
    pointer = "/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method.lower()
    return {
        "operationRef": "#" + quote(pointer, safe="/~"),
        "description": description,
        "parameters": parameters,
    }


def raw_json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself (to verify a signature
    over the raw bytes first): the body `model` describes, its definitions inlined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": _inlined(schema, definitions)}},
        }
    }


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inlined(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inlined(value, definitions) for value in node]
    return node


def install_openapi(app: FastAPI) -> None:
    """Serve the document with what FastAPI cannot derive: no default 422 answers (a
    validation error is a 400 in the one error body, api/errors.py, and each route declares
    its 400s), and the allowed redirect origins, which come from settings."""
    settings: Settings = app.state.settings

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _drop_default_422(document)
            _publish_redirect_origins(document, settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_default_422(document: dict[str, Any]) -> None:
    for operations in document["paths"].values():
        for operation in operations.values():
            answer = operation["responses"].get("422", {})
            if answer.get("content", {}).get("application/json", {}).get("schema") == FASTAPI_422:
                del operation["responses"]["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _publish_redirect_origins(document: dict[str, Any], settings: Settings) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    pattern = redirect_pattern(settings.redirect_origins)
    for model, fields in REDIRECT_FIELDS.items():
        for name in fields:
            for branch in schemas[model]["properties"][name]["anyOf"]:
                if branch.get("type") == "string":
                    branch["pattern"] = pattern
