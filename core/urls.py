"""URL checks shared by redirects and links: only allow-listed origins, never open redirects."""

import re
from urllib.parse import urlsplit

PAYMENTS_PREFIX = "/api/payments"
# Where Stripe delivers events: the app's route, the middleware's raw-body rule, the
# sandbox's and `make dev`'s default endpoint.
WEBHOOK_PATH = f"{PAYMENTS_PREFIX}/webhook/"


def origin_of(url: str) -> str | None:
    """scheme://host[:port] in lower case, or None for anything that is not plain http(s)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    if "\\" in url or any(ord(c) < 0x21 for c in url):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def is_allowed_redirect(url: str, allowed_origins: set[str]) -> bool:
    origin = origin_of(url)
    return origin is not None and origin in allowed_origins


def redirect_pattern(allowed_origins: set[str]) -> str:
    """A JSON Schema pattern for what `is_allowed_redirect` accepts, or the empty string.

    Each origin as `origin_of` reads it (scheme and host in any case, the default port
    spelled out or not), then nothing or a path, query or fragment without spaces, control
    characters or backslashes."""
    origins = []
    for origin in sorted(allowed_origins):
        scheme, _, authority = origin.partition("://")
        host, _, port = authority.partition(":")
        default = {"http": "80", "https": "443"}[scheme]
        port_pattern = f":{port}" if port else f"(?::{default})?"
        origins.append(f"{any_case(scheme)}://{any_case(host)}{port_pattern}")
    return rf"^(?:(?:{'|'.join(origins)})(?:[/?#][^\x00-\x20\\]*)?)?$"


def any_case(text: str) -> str:
    """`text` as a regex that matches it in any case, without flags (JSON Schema has none)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)
