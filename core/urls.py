"""URL checks shared by redirects and links: only allow-listed origins, never open redirects."""

from urllib.parse import urlsplit


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
