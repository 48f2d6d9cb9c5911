"""No request stalls the event loop: hostile bodies at each route's size limit are refused
within a second, and /api/health keeps answering within a second meanwhile.

The API runs as production runs it (`uvicorn --factory api.main:app_factory`, JSON logs) in
its own process, on the session's Postgres and Temporal: a server stuck holding the GIL
cannot then also stop the test's own clock, and the test fails fast instead of hanging.
"""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.forms import MAX_FORM_BYTES
from core.urls import WEBHOOK_PATH
from tests.utils.helpers import ROOT, free_port
from tests.utils.stack import WEBHOOK_SECRET, Stack

BOUND_S = 1.0  # the bound, for the hostile request and for every health check
PROBE_GAP_S = 0.02
CHECKOUT = "/api/payments/create-anonymous-checkout/"
WEBHOOK = WEBHOOK_PATH
FORM_TYPE = "application/x-www-form-urlencoded"
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": FORM_TYPE}


@dataclass
class Api:
    url: str
    max_body_bytes: int
    max_webhook_body_bytes: int
    max_json_depth: int


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = stack.settings
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": settings.stripe_api_base,
        "SMTP_PORT": str(settings.smtp_port),
    }
    log = Path(tmp_path_factory.mktemp("loop-stall")) / "api.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:app_factory"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield Api(
            url, settings.max_body_bytes, settings.max_webhook_body_bytes, settings.max_json_depth
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # stuck holding the GIL: its signal handler never runs
            proc.kill()
            proc.wait(10)


def client(api: Api) -> httpx.AsyncClient:
    # Timeouts past the bound only so that a stalled server fails the test instead of hanging it.
    return httpx.AsyncClient(base_url=api.url, timeout=5 * BOUND_S)


class HealthWatch:
    """Asks /api/health again and again until stopped; each answer's latency (inf: none)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.latencies: list[float] = []
        self._answered = asyncio.Condition()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with client(self.api) as prober:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    ok = (await prober.get("/api/health")).status_code == 200
                except httpx.TimeoutException:
                    ok = False
                async with self._answered:
                    self.latencies.append(time.monotonic() - started if ok else float("inf"))
                    self._answered.notify_all()
                await asyncio.sleep(PROBE_GAP_S)

    async def answers(self, count: int) -> None:
        async with self._answered:
            await self._answered.wait_for(lambda: len(self.latencies) >= count)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Observed:
    response: httpx.Response | None
    seconds: float
    slowest_health_s: float


async def observe(
    api: Api,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str] | list[tuple[str, str]],
) -> Observed:
    """Send one request while /api/health is polled; how long each took."""
    watch = HealthWatch(api)
    probes = asyncio.create_task(watch.run())
    async with client(api) as hostile:
        await watch.answers(1)  # the prober is connected
        before = len(watch.latencies)
        started = time.monotonic()
        try:
            response: httpx.Response | None = await hostile.request(
                method, path, content=body, headers=headers
            )
        except httpx.TimeoutException:
            response = None
        seconds = time.monotonic() - started
        # Two more answers after this request's, so a stall at its end is seen too.
        await watch.answers(before + 2)
    watch.stop()
    await probes
    return Observed(response, seconds, max(watch.latencies[before:]))


def assert_refused_promptly(seen: Observed, name: str, statuses: tuple[int, ...]) -> None:
    where = f"{name}: request {seen.seconds:.3f} s, slowest health {seen.slowest_health_s:.3f} s"
    assert seen.response is not None, f"no answer within {5 * BOUND_S} s ({where})"
    assert seen.response.status_code in statuses, (where, seen.response.text[:300])
    assert seen.seconds < BOUND_S, where
    assert seen.slowest_health_s < BOUND_S, where


def exactly(size: int, body: bytes) -> bytes:
    """`body` padded with JSON whitespace (inside an open string: part of it) to `size`."""
    assert len(body) <= size
    return body.ljust(size)


def hostile_json(size: int, depth: int) -> dict[str, bytes]:
    n = size - 64  # room for the framing around the repeated part
    nest_at_limit = b"[" * (depth - 1) + b"]" * (depth - 1)
    return {
        # The body: an unterminated string of escapes behind 40 brackets.
        "brackets then quote-backslash pairs": b"[" * 40 + b'"\\' * ((size - 40) // 2),
        "deep nesting": b"[" * size,
        "deep balanced nesting": b"[" * (size // 2) + b"]" * (size // 2),
        "nests at the depth limit, repeated": b"["
        + b",".join([nest_at_limit] * (n // (len(nest_at_limit) + 1)))
        + b"]",
        "brackets in strings": b'["[' * (size // 3),
        "empty strings": b"[" * 40 + b'""' * (n // 2),
        "huge integer": b'{"email": ' + b"9" * n + b"}",
        "huge float": b'{"email": 1.' + b"9" * n + b"e5}",
        "long string of escapes": b'{"email": "' + b"\\\\" * (n // 2) + b'"}',
        "long string of unicode escapes": b'{"password": "' + b"\\ud83d\\ude00" * (n // 12) + b'"}',
        "many keys": b"{" + b",".join(b'"k%d":0' % i for i in range(n // 12)) + b"}",
        "many numbers": b"[" + b",".join([b"1e308"] * (n // 6)) + b"]",
    }


ROUTES = {
    "login": ("/api/auth/login", (400,)),
    "set-password": ("/api/auth/set-password", (400,)),
    "checkout": (CHECKOUT, (400,)),
    # Unauthenticated: the body is read before the login is checked.
    "staff": ("/api/staff/grants", (400, 401)),
}


@pytest.mark.parametrize("route", ROUTES)
async def test_hostile_json_at_the_body_limit_does_not_stall(api: Api, route: str) -> None:
    path, statuses = ROUTES[route]
    for name, body in hostile_json(api.max_body_bytes, api.max_json_depth).items():
        seen = await observe(api, "POST", path, exactly(api.max_body_bytes, body), JSON)
        assert_refused_promptly(seen, f"{route}, {name}", statuses)


async def test_hostile_webhooks_at_the_webhook_limit_do_not_stall(api: Api) -> None:
    headers = {**JSON, "Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"}
    size = api.max_webhook_body_bytes
    for name, body in hostile_json(size, api.max_json_depth).items():
        seen = await observe(api, "POST", WEBHOOK, exactly(size, body), headers)
        assert_refused_promptly(seen, f"webhook, {name}", (400,))


def hostile_forms(size: int) -> dict[str, bytes]:
    return {
        "separators only": b"&" * size,
        "percent escapes": b"email=" + b"%41" * (size // 3 - 2),
        "many fields": b"a=&" * (size // 3),
        "many plus signs": b"email=" + b"+" * (size - 6),
    }


@pytest.mark.parametrize("path", ["/login", "/get-started", "/forgot-password", "/set-password"])
async def test_hostile_page_forms_do_not_stall(api: Api, path: str) -> None:
    # At the forms' own limit the fields are parsed; at the body limit they are not.
    for size in (MAX_FORM_BYTES, api.max_body_bytes):
        for name, body in hostile_forms(size).items():
            seen = await observe(api, "POST", path, exactly(size, body), FORM)
            assert_refused_promptly(seen, f"{path}, {name}, {size} bytes", (400, 413))


def hostile_headers(content_type: str) -> dict[str, list[tuple[str, str]]]:
    return {
        "a thousand headers": [("Content-Type", content_type)] + [("X-Padding", "x")] * 1000,
        "a 1 MB cookie": [("Content-Type", content_type), ("Cookie", "a=b; " * 200_000 + "c=d")],
        "a 60 KB Content-Type": [("Content-Type", f"{content_type}; " + "a=b; " * 12_000 + "c=d")],
    }


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        pytest.param("/login", FORM_TYPE, b"email=a%40example.com&password=x", id="page"),
        pytest.param(
            "/api/auth/login",
            "application/json",
            b'{"email": "a@example.com", "password": "x"}',
            id="api",
        ),
    ],
)
async def test_hostile_headers_do_not_stall(
    api: Api, path: str, content_type: str, body: bytes
) -> None:
    for name, headers in hostile_headers(content_type).items():
        seen = await observe(api, "POST", path, body, headers)
        assert_refused_promptly(seen, f"{path}, {name}", (415, 431))


@pytest.mark.parametrize(
    "url",
    [
        # The access log masks tokens in every URL it writes, on the event loop.
        "/api/health?q=" + "eyJ" * 20_000,
        "/api/payments/verify-session/?" + "a=%41&" * 10_000 + "session_id=cs_test_a1b2c3d4e5",
        "/login?" + "a=%41&" * 10_000,
        "/api/staff/enrollments?" + "email=a&" * 7_000,
    ],
    ids=["tokens in the log", "verify-session", "page", "staff"],
)
async def test_a_hostile_address_does_not_stall(api: Api, url: str) -> None:
    seen = await observe(api, "GET", url, None, {})
    assert_refused_promptly(seen, f"GET {url[:40]}...", (414,))
