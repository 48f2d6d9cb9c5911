"""Form bodies (the pages' posts without JavaScript), bounded before they are parsed.

Starlette parses forms in pure Python (python-multipart), on the event loop, in time that
grows with the separators and %-escapes: 64 KB of `&` took it tens of milliseconds. A page
form is a handful of short fields, so a body bigger than one, or with more separators
than it has fields, is refused before any parsing, and what is parsed takes a millisecond
or two. (A worker thread would not help: pure Python holds the GIL, and the loop would
wait for it at every step of every other request.)
"""

from fastapi import HTTPException, Request

MAX_FIELDS = 16  # the longest page form has five fields: more is not one of ours
# Two 256-character passwords of 4-byte characters, %-escaped, and the other fields.
MAX_FORM_BYTES = 16 * 1024
URLENCODED = "application/x-www-form-urlencoded"


async def form_fields(request: Request) -> dict[str, str]:
    """The form's text fields, parsed once per request (the CSRF check and the page share it).

    400 for more than MAX_FIELDS fields or any file, 413 past MAX_FORM_BYTES."""
    fields: dict[str, str] | None = getattr(request.state, "form_fields", None)
    if fields is None:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"Forms are limited to {MAX_FORM_BYTES} bytes.")
        urlencoded = request.headers.get("content-type", "").lower().startswith(URLENCODED)
        if urlencoded and body.count(b"&") >= MAX_FIELDS:
            raise HTTPException(400, f"Forms have at most {MAX_FIELDS} fields.")
        async with request.form(max_fields=MAX_FIELDS, max_files=0) as form:
            fields = {name: value for name, value in form.items() if isinstance(value, str)}
        request.state.form_fields = fields
    return fields
