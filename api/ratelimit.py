"""Abuse limits per client address and per email: fixed windows, in memory or in Redis.

Limits come from settings on every check (`RATE_LIMIT_LOGIN_IP="30/min"`, ...), so they
can be tuned without a restart in tests; `RATE_LIMIT_ENABLED=false` turns them all off.
With the Redis backend the windows are shared by every API process; if Redis cannot be
reached, the process falls back to its own memory rather than failing the request.

The client address is the TCP peer unless that peer is one of TRUSTED_PROXIES; only then
is X-Forwarded-For read. The server must not rewrite the peer itself (uvicorn runs with
`--no-proxy-headers`, or with `--forwarded-allow-ips` equal to TRUSTED_PROXIES).
"""

import asyncio
import hashlib
import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI, Request

from api.errors import AppError
from api.security_cookies import DEVICE_COOKIE
from core.accounts.security import device_token_valid
from core.settings import Settings

log = logging.getLogger(__name__)

# What a window counts: the client address (an IPv6 one by its /64, which one subscriber
# holds whole), the email, or the two together.
KINDS = ("ip", "email", "email_ip")
IPV6_CLIENT_PREFIX = 64
PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_SPEC = re.compile(r"^(\d+)/(\d*)([a-z]+?)s?$")


class TooManyRequests(AppError):
    status_code = 429
    error = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many attempts; try again in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


@dataclass(frozen=True)
class Limit:
    count: int
    seconds: int


@lru_cache(maxsize=64)
def parse_limit(spec: str) -> Limit | None:
    """'10/min', '5/15min', '100/h', '3/day'; '' or '0/...' means no limit."""
    compact = "".join(spec.split()).lower()
    if not compact:
        return None
    match = _SPEC.match(compact)
    if match is None or match.group(3) not in PERIODS:
        raise ValueError(f"not a rate limit: {spec!r} (expected e.g. '10/min' or '5/15min')")
    count, multiple, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3)
    return Limit(count, multiple * PERIODS[unit]) if count > 0 and multiple > 0 else None


class Windows(Protocol):
    async def hit(self, key: str, limit: Limit) -> float:
        """Count one request; seconds until the window resets if it is over, else 0."""
        ...

    async def undo(self, key: str) -> None:
        """Take back one count of a window still open (a reserved attempt that did not fail)."""
        ...


class MemoryWindows:
    """One process's windows. Expired keys are swept now and then, so memory stays bounded."""

    SWEEP_EVERY = 1024

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._hits = 0

    async def hit(self, key: str, limit: Limit) -> float:
        now = time.monotonic()
        with self._lock:
            resets_at, count = self._windows.get(key, (0.0, 0))
            if now >= resets_at:
                resets_at, count = now + limit.seconds, 0
            count += 1
            self._windows[key] = (resets_at, count)
            self._hits += 1
            if self._hits % self.SWEEP_EVERY == 0:
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
        return resets_at - now if count > limit.count else 0.0

    async def undo(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            resets_at, count = self._windows.get(key, (0.0, 0))
            if now < resets_at and count > 0:
                self._windows[key] = (resets_at, count - 1)


# INCR and the first PEXPIRE in one step, so a crash between them cannot leave a key
# that never expires.
_WINDOW_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
# Never below zero, never a key without an expiry.
_UNDO_SCRIPT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


class RedisError(Exception):
    pass


class RedisWindows:
    """Windows shared through Redis, spoken in RESP over one connection per process."""

    TIMEOUT_S = 0.5
    WARN_EVERY_S = 60.0

    def __init__(self, url: str, fallback: MemoryWindows) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._password = unquote(parts.password) if parts.password else None
        self._db = int(parts.path.lstrip("/") or 0)
        self._fallback = fallback
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock: asyncio.Lock | None = None
        self._warned_at = -math.inf

    async def hit(self, key: str, limit: Limit) -> float:
        try:
            reply = await self._call("EVAL", _WINDOW_SCRIPT, "1", key, str(limit.seconds * 1000))
        except (OSError, RedisError, TimeoutError):
            self._warn()
            return await self._fallback.hit(key, limit)
        count, ttl_ms = int(reply[0]), int(reply[1])
        return ttl_ms / 1000 if count > limit.count else 0.0

    async def undo(self, key: str) -> None:
        try:
            await self._call("EVAL", _UNDO_SCRIPT, "1", key)
        except (OSError, RedisError, TimeoutError):
            self._warn()
            await self._fallback.undo(key)

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > self.WARN_EVERY_S:
            self._warned_at = now
            log.warning("redis unreachable for rate limits; using this process's memory")

    async def _call(self, *args: str) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                if self._writer is None:
                    await asyncio.wait_for(self._connect(), self.TIMEOUT_S)
                return await asyncio.wait_for(self._roundtrip(args), self.TIMEOUT_S)
            except BaseException:
                self._close()
                raise

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        if self._password:
            await self._roundtrip(("AUTH", self._password))
        if self._db:
            await self._roundtrip(("SELECT", str(self._db)))

    async def _roundtrip(self, args: tuple[str, ...]) -> Any:
        assert self._reader is not None and self._writer is not None
        encoded = [a.encode() for a in args]
        out = b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
        self._writer.write(out)
        await self._writer.drain()
        return await self._reply(self._reader)

    async def _reply(self, reader: asyncio.StreamReader) -> Any:
        line = await reader.readline()
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [await self._reply(reader) for _ in range(size)]
        raise RedisError("unexpected reply")

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class Reservation:
    """Attempts counted ahead of their outcome, so concurrent ones cannot slip past a limit;
    `release` takes back those that turned out not to count (a login that succeeded)."""

    windows: Windows
    keys: list[str] = field(default_factory=list)

    async def release(self) -> None:
        keys, self.keys = self.keys, []
        for key in keys:
            await self.windows.undo(key)


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        for name in type(settings).model_fields:  # a typo in a limit fails at startup
            if name.startswith("rate_limit_") and name != "rate_limit_backend":
                value = getattr(settings, name)
                if isinstance(value, str):
                    parse_limit(value)
        memory = MemoryWindows()
        self.windows: Windows = (
            RedisWindows(settings.redis_url, memory)
            if settings.rate_limit_backend == "redis"
            else memory
        )

    async def check(
        self, scope: str, client: str, email: str | None = None, *, kinds: Collection[str] = KINDS
    ) -> None:
        """Count one attempt; TooManyRequests if the address or the email is over its limit."""
        await self.reserve(scope, client, email, kinds=kinds)

    async def reserve(
        self,
        scope: str,
        client: str,
        email: str | None = None,
        *,
        kinds: Collection[str] = KINDS,
        exempt: Collection[str] = (),
    ) -> Reservation:
        """Count one attempt in each of `scope`'s windows of `kinds`; TooManyRequests (and
        nothing counted) if one is over, unless that one's kind is `exempt`."""
        reservation = Reservation(self.windows)
        settings = self.settings
        if not settings.rate_limits_on:
            return reservation
        wait = 0.0
        for kind in kinds:
            subject = _subject(kind, client, email)
            limit = parse_limit(str(getattr(settings, f"rate_limit_{scope}_{kind}", "")))
            if subject is None or limit is None:
                continue
            key = f"onramp:rl:{scope}:{kind}:{subject}"
            reservation.keys.append(key)
            over = await self.windows.hit(key, limit)
            if kind not in exempt:
                wait = max(wait, over)
        if wait > 0:
            await reservation.release()
            raise TooManyRequests(max(1, math.ceil(wait)))
        return reservation


def _subject(kind: str, client: str, email: str | None) -> str | None:
    if kind == "ip":
        return _network_of(client)
    if not email:
        return None
    # Hashed: the limiter (and Redis) never holds addresses in the clear.
    text = email if kind == "email" else f"{email}\n{_network_of(client)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _network_of(client: str) -> str:
    address = _ip(client)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return client


def limiter_for(app: FastAPI) -> RateLimiter:
    limiter: RateLimiter | None = getattr(app.state, "rate_limiter", None)
    if limiter is None:
        limiter = app.state.rate_limiter = RateLimiter(app.state.settings)
    return limiter


# ---- the client address ---------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(spec: str) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES ("10.0.0.5, 172.18.0.0/16") as networks (validated by the settings)."""
    return tuple(
        ipaddress.ip_network(i.strip(), strict=False) for i in spec.split(",") if i.strip()
    )


def _ip(value: str) -> IPAddress | None:
    """An address as a peer or a proxy writes it: bare, `v4:port`, `[v6]` or `[v6]:port`."""
    value = value.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: Request) -> str:
    """The peer, unless it is a trusted proxy: then the right-most address in
    X-Forwarded-For that is not a trusted proxy. Each proxy appends the address it was
    reached from, so everything left of that one was written by the client itself and
    proves nothing. `Forwarded` is never read: a proxy that writes one of the two headers
    passes the other one on from the client untouched."""
    peer = request.client.host if request.client else ""
    address = _ip(peer)
    if address is None:
        return peer or "unknown"
    trusted = trusted_networks(request.app.state.settings.trusted_proxies)
    if not any(address in net for net in trusted):
        return str(address)
    hops = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
    for raw in reversed(hops):
        if not raw.strip():
            continue
        hop = _ip(raw)
        if hop is None:  # not written by a proxy we trust: keep the last address one vouched for
            break
        address = hop
        if not any(hop in net for net in trusted):
            break
    return str(address)


# ---- what the endpoints call -----------------------------------------------------------


async def rate_limit(request: Request, scope: str, email: str | None = None) -> None:
    """Count one attempt at `scope` for the calling address (and email); 429 when over."""
    await limiter_for(request.app).check(scope, client_address(request), email)


@asynccontextmanager
async def counted_on(reservation: Reservation, failure: type[BaseException]) -> AsyncIterator[None]:
    """Keep the reserved attempt if the block raises `failure`; give it back otherwise."""
    try:
        yield
    except failure:
        raise
    except BaseException:
        await reservation.release()
        raise
    else:
        await reservation.release()


@asynccontextmanager
async def login_limited(
    request: Request, email: str, wrong_password: type[BaseException]
) -> AsyncIterator[None]:
    """Every attempt counts per address; only the failed ones count per (email, address)
    and per email, so a guesser locks out its own address, never the owner's.

    Past the per-email bound (guessing from many addresses) a new client is refused
    without its password being checked, right or wrong. Checking it there would tell the
    guessers, by 200 or 429, exactly what a 401 tells them: the bound would stop nothing.
    What sets the owner apart is not the password but the browser: one that logged in to
    this account before carries a signed cookie naming it, and is still checked (within
    its own per-(email, address) limit). The owner on a new device meanwhile has the
    forgot-password link, which logs in too.
    """
    limiter = limiter_for(request.app)
    client = client_address(request)
    await limiter.check("login", client, kinds=("ip",))
    settings = request.app.state.settings
    known = device_token_valid(settings, request.cookies.get(DEVICE_COOKIE), email)
    reservation = await limiter.reserve(
        "login", client, email, kinds=("email_ip", "email"), exempt=("email",) if known else ()
    )
    async with counted_on(reservation, wrong_password):
        yield


@asynccontextmanager
async def unknown_ids_limited(
    request: Request, scope: str, unknown: type[BaseException]
) -> AsyncIterator[None]:
    """Reserve one look-up of an id in `scope`'s per-address window before it is made
    (concurrent ones cannot pass the bound); kept only if the id was `unknown`."""
    reservation = await limiter_for(request.app).reserve(
        scope, client_address(request), kinds=("ip",)
    )
    async with counted_on(reservation, unknown):
        yield
