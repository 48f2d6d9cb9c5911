"""Form bodies (the pages' posts without JavaScript), parsed in a worker thread.

Starlette parses forms in pure Python (python-multipart, the Content-Type's parameters
included): 64 KB of `&` or of `%41` keeps it busy for tens of milliseconds, a long
Content-Type for seconds. On the event loop that would hold up every other request; in a
worker thread the loop still gets the GIL every few milliseconds.
"""

import asyncio

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.types import Message, Scope

MAX_FIELDS = 16  # the longest page form has five fields: more is not one of ours


async def form_fields(request: Request) -> dict[str, str]:
    """The form's text fields, parsed once per request (the CSRF check and the page share it).

    Files are refused (400): no page takes one."""
    fields: dict[str, str] | None = getattr(request.state, "form_fields", None)
    if fields is None:
        body = await request.body()
        fields = await run_in_threadpool(_parse, dict(request.scope), body)
        request.state.form_fields = fields
    return fields


def _parse(scope: Scope, body: bytes) -> dict[str, str]:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def parse() -> dict[str, str]:
        # Starlette's own parser, so the fields are what `request.form()` would give.
        async with Request(scope, receive).form(max_fields=MAX_FIELDS, max_files=0) as form:
            return {name: value for name, value in form.items() if isinstance(value, str)}

    return asyncio.run(parse())
