"""Schemathesis against the running API over real HTTP, with every check: what /openapi.json
publishes (statuses, bodies, headers, content types, parameters, constraints, logins) is
what the API does, and no request makes it answer 5xx.

Valid and invalid requests from the schema's examples, its coverage cases (boundaries,
missing parts, wrong types, unexpected methods) and fuzzing, per operation; then linked
sequences (stateful). Staff routes carry a staff login, student routes a student's.
Deterministic: the seed is fixed and printed, generation derandomized.

The schema is loaded with the module, from an app with the same settings as the one served
(`schemathesis.pytest.from_fixture` reads `Node._nodeid`, which pytest 9.2 no longer has);
the stack fixture first checks that the served /openapi.json is that very schema.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from api.payments.schemas import NAME_FORMAT
from core.models import Role
from core.settings import Settings
from core.urls import WEBHOOK_PATH
from devstack.mailcatcher import MailCatcher
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.helpers import free_port, signed
from tests.utils.security import PASSWORD, make_user
from tests.utils.stack import WEBHOOK_SECRET, empty_tables, make_settings
from worker import build_worker

SEED = 15_008
# Bounded so the module runs in a few minutes on two shared cores.
FUZZ_EXAMPLES = 10
STATEFUL_SCENARIOS = 10
STATEFUL_STEPS = 6
REQUEST_TIMEOUT_S = 60
WEBHOOK = WEBHOOK_PATH
SET_PASSWORD = "/api/auth/set-password"
# Known before the app exists: the published schema names the allowed redirect origin.
API_PORT = free_port()
API_URL = f"http://127.0.0.1:{API_PORT}"

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "base-url": API_URL,
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"max-examples": FUZZ_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True, "max-steps": STATEFUL_STEPS},
        },
        # Every check, built in or not: none is left out.
        "checks": {"enabled": True},
        "operations": [
            {
                # A genuine false positive of positive_data_acceptance, and the one place a
                # check is widened: `{"token": "0000000000000000", "password": "0"}` is
                # well formed, and the 400 `Invalid link` it gets is right: no email ever
                # carried that token. A schema cannot say which tokens exist (the check
                # itself excuses a 400 from operations it knows mint credentials, by their
                # tokenUrl). Only a real link gets further, and no generated one is real.
                "include-path": SET_PASSWORD,
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404"]
                        + ["409", "429", "5xx"]
                    }
                },
            }
        ],
    }
)
schema = schemathesis.openapi.from_dict(
    create_app(
        Settings(_env_file=None, app_env="test", port=API_PORT, public_base_url=API_URL)
    ).openapi(),
    config=CONFIG,
)
# Names as the published format describes them (api.payments.schemas.CheckoutCreate.name):
# at most 100 characters that are not control, format or unassigned ones, not all spaces,
# and runs of whitespace that collapse, up to the 200 characters the field takes.
_NAMES = st.text(
    st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), min_size=1, max_size=100
).filter(str.strip)
schemathesis.openapi.format(
    NAME_FORMAT,
    _NAMES.flatmap(lambda name: st.integers(0, 200 - len(name)).map(lambda n: name + " " * n)),
)

# Access tokens by role, once the stack runs; the cases carry placeholders until sent.
LOGINS: dict[str, str] = {}
PLACEHOLDERS = {f"{role}-login": role for role in (Role.STAFF, Role.STUDENT)}


@schema.auth(refresh_interval=None)
class Logins:
    """A staff login for the staff routes, a student's for the other routes that take one.
    Given as auth, schemathesis also sends these requests without a login and with a bad
    one (expecting 401), and keeps it off the cases it means to be unauthenticated."""

    def get(self, case: Case, context: Any) -> str | None:
        if not case.operation.definition.raw.get("security"):
            return None
        return Role.STAFF if case.operation.path.startswith("/api/staff/") else Role.STUDENT

    def set(self, case: Case, role: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {role}-login"}


class ApiSession(requests.Session):
    """How the cases reach the API. No cookies kept between them. The logins put in for
    their placeholders: schemathesis builds example and coverage cases at collection,
    before any token exists. Each request to the webhook that carries a Stripe-Signature
    signed, as Stripe would, over the exact bytes sent: no generated value is a valid
    signature, so every valid event would be refused before it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and token in PLACEHOLDERS:
            request.headers["Authorization"] = f"Bearer {LOGINS[PLACEHOLDERS[token]]}"
        if request.path_url == WEBHOOK and "Stripe-Signature" in request.headers:
            body = request.body or b""
            text = body.decode() if isinstance(body, bytes) else body
            request.headers["Stripe-Signature"] = signed(text, WEBHOOK_SECRET)[1][
                "Stripe-Signature"
            ]
        return super().send(request, **kwargs)


class ThreadedWorker:
    """The stack's worker, on an event loop in a thread of its own.

    Schemathesis' pytest tests are synchronous: while they run, the session's event loop
    (where the shared stack's worker polls) is idle, and routes that wait on a workflow
    (a manual reconciliation, a cancel) would wait for nothing."""

    def __init__(self, target_host: str, settings: Settings) -> None:
        self.target_host, self.settings = target_host, settings
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="conformance-worker", daemon=True)

    def __enter__(self) -> "ThreadedWorker":
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError("the conformance worker did not start") from self._error
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # noqa: BLE001 (reported to the starting thread)
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        client = await Client.connect(self.target_host, namespace=self.settings.temporal_namespace)
        with ThreadPoolExecutor(max_workers=16) as executor:
            async with build_worker(client, self.settings, executor):
                self._ready.set()
                await self._stop.wait()


@dataclass
class Conformance:
    api_url: str
    engine: sa.Engine
    session: ApiSession = field(default_factory=ApiSession)
    cases: Counter[str] = field(default_factory=Counter)

    def login(self, email: str, role: str) -> None:
        make_user(self.engine, email, role=role)
        r = httpx.post(
            f"{self.api_url}/api/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        LOGINS[role] = r.json()["access"]

    def call_kwargs(self, case: Case) -> dict[str, Any]:
        self.cases[case.operation.label] += 1
        return {"session": self.session}


@pytest.fixture(scope="module")
def conformance(
    database_url: str, engine: sa.Engine, temporal: WorkflowEnvironment, mail: MailCatcher
) -> Iterator[Conformance]:
    """API, Stripe sandbox and worker of their own on the session's Postgres and Temporal,
    empty tables, and a staff member and a student logged in. One state for the module:
    the answers must match the schema whatever earlier cases left behind."""
    sandbox_port = free_port()
    target = temporal.client.service_client.config.target_host
    settings = make_settings(
        database_url,
        target,
        mail,
        port=API_PORT,
        public_base_url=API_URL,
        stripe_api_base=f"http://127.0.0.1:{sandbox_port}",
    )
    sandbox_app = create_sandbox(
        webhook_url=f"{settings.public_base_url}{WEBHOOK}",
        webhook_secret=WEBHOOK_SECRET,
        public_url=f"http://127.0.0.1:{sandbox_port}",
        retry_delays=(0.2, 0.5, 1, 2),
    )
    began = time.monotonic()
    with (
        BackgroundServer(sandbox_app, port=sandbox_port),
        BackgroundServer(create_app(settings), port=settings.port) as api,
        ThreadedWorker(target, settings),
    ):
        served = httpx.get(f"{api.url}/openapi.json").json()
        assert served == schema.raw_schema, "the served schema is not the one under test"
        empty_tables(engine)
        stack = Conformance(api.url, engine)
        stack.login("conformance.staff@staff.example.com", Role.STAFF)
        stack.login("conformance.student@example.com", Role.STUDENT)
        print(f"schemathesis seed {SEED}, derandomized")
        yield stack
        print(
            f"{sum(stack.cases.values())} cases over {len(stack.cases)} operations "
            f"in {time.monotonic() - began:.0f} s: {dict(stack.cases)}"
        )
    LOGINS.clear()


@schema.parametrize()
def test_every_operation_answers_as_published(case: Case, conformance: Conformance) -> None:
    case.call_and_validate(**conformance.call_kwargs(case))


def test_linked_operations_answer_as_published(conformance: Conformance) -> None:
    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return conformance.call_kwargs(case)

    Scenarios.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
