"""A webhook storm: 200 paid Checkout Sessions, their events and the events of unpaid ones,
every event delivered three times, all shuffled (completions before creations, async
results before the completion they follow): exactly 200 enrollments come out."""

import asyncio
import random
import secrets
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus

from core.settings import Settings
from core.urls import WEBHOOK_PATH
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.chaos import Chaos, MakeChaos, say
from tests.utils.helpers import CHECKOUT, event, signed

pytestmark = pytest.mark.chaos

PAID = 200
CARD_BY_CHECKOUT = 140  # paid by card; their completion event is the one that fulfils
ASYNC_PAID = 40  # delayed method: completed unpaid first, then async_payment_succeeded
BY_PAYMENT_INTENT = PAID - CARD_BY_CHECKOUT - ASYNC_PAID  # only payment_intent.succeeded
EXPIRED = 10
ASYNC_FAILED = 5
COPIES = 3


class Sandbox:
    """The offline Stripe: sessions are made through its API, paid through its controls."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.http = httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {settings.stripe_api_key}"}
        )

    async def new_session(self, chaos: Chaos, email: str) -> str:
        """Through our checkout endpoint, so our row exists: a completion for a Session we
        never created is refused (tests/ops/test_fulfilment_gate.py), not fulfilled."""
        async with chaos.http() as http:
            r = await http.post(
                CHECKOUT, json={"email": email, "name": "Storm Student", "track": "DP"}
            )
            assert r.status_code == 200, r.text
            return str(r.json()["sessionId"])

    async def control(self, path: str, **body: Any) -> dict[str, Any]:
        r = await self.http.post(f"/_sandbox{path}", json=body or None)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def get(self, path: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1{path}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def expire(self, session_id: str) -> dict[str, Any]:
        r = await self.http.post(f"/v1/checkout/sessions/{session_id}/expire")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


Pair = tuple[str, str, str]  # (what, id of the event that comes first in real life, later)


async def build_events(
    chaos: Chaos, sandbox: Sandbox, run: str
) -> tuple[list[dict[str, Any]], list[str], list[Pair]]:
    """Stripe-shaped events from the sandbox's own objects: the events, the paid Session
    ids, and the pairs whose real-life order the shuffle may invert."""
    events: list[dict[str, Any]] = []
    paid: list[str] = []
    pairs: list[Pair] = []
    semaphore = asyncio.Semaphore(8)

    def add(etype: str, obj: dict[str, Any]) -> str:
        events.append(event(etype, obj))
        return str(events[-1]["id"])

    async def one(i: int) -> None:
        async with semaphore:
            sid = await sandbox.new_session(chaos, f"storm-{run}-{i}@example.com")
            if i < CARD_BY_CHECKOUT + BY_PAYMENT_INTENT:
                result = await sandbox.control(f"/checkout/sessions/{sid}/pay")
                created = add("payment_intent.created", result["payment_intent"])
                if i < CARD_BY_CHECKOUT:
                    done = add("checkout.session.completed", result["checkout_session"])
                else:
                    done = add("payment_intent.succeeded", result["payment_intent"])
                pairs.append(("completed before created", created, done))
                paid.append(sid)
            elif i < PAID:
                first = await sandbox.control(f"/checkout/sessions/{sid}/pay", **{"async": True})
                done = add("checkout.session.completed", first["checkout_session"])
                settled = await sandbox.control(
                    f"/checkout/sessions/{sid}/async_result", succeeded=True
                )
                late = add("checkout.session.async_payment_succeeded", settled["checkout_session"])
                pairs.append(("async success before completed", done, late))
                paid.append(sid)
            elif i < PAID + EXPIRED:
                add("checkout.session.expired", await sandbox.expire(sid))
            else:
                first = await sandbox.control(f"/checkout/sessions/{sid}/pay", **{"async": True})
                done = add("checkout.session.completed", first["checkout_session"])
                failed = await sandbox.control(
                    f"/checkout/sessions/{sid}/async_result", succeeded=False
                )
                late = add("checkout.session.async_payment_failed", failed["checkout_session"])
                pairs.append(("async failure before completed", done, late))

    await asyncio.gather(*(one(i) for i in range(PAID + EXPIRED + ASYNC_FAILED)))
    return events, paid, pairs


def inversions(order: list[dict[str, Any]], pairs: list[Pair]) -> Counter[str]:
    """How often the shuffle delivered the later event of a pair before the earlier one."""
    first: dict[str, int] = {}
    for index, evt in enumerate(order):
        first.setdefault(str(evt["id"]), index)
    return Counter(what for what, early, late in pairs if first[late] < first[early])


async def test_storm_of_shuffled_repeated_events_makes_exactly_200_enrollments(
    make_chaos: MakeChaos,
) -> None:
    rng = random.Random(int(time.time()))
    server = BackgroundServer()
    chaos = await make_chaos(stripe_api_base=server.url)
    # No webhooks from the sandbox itself: this test is the only deliverer.
    server.app = create_sandbox(
        webhook_url=None, webhook_secret=chaos.secret, public_url=server.url
    )
    run = secrets.token_hex(3)
    with server:
        sandbox = Sandbox(server.url, chaos.settings)
        began = time.monotonic()
        events, paid, pairs = await build_events(chaos, sandbox, run)
        built_s = time.monotonic() - began
        await chaos.start_worker()
        deliveries = [e for e in events for _ in range(COPIES)]
        rng.shuffle(deliveries)
        statuses: Counter[int] = Counter()
        outcomes: Counter[str] = Counter()
        semaphore = asyncio.Semaphore(20)
        async with chaos.http(limits=httpx.Limits(max_connections=20)) as http:

            async def deliver(evt: dict[str, Any]) -> None:
                payload, headers = signed(evt, chaos.secret)
                async with semaphore:
                    r = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
                statuses[r.status_code] += 1
                outcomes[f"{evt['type']} -> {r.json().get('outcome')}"] += 1

            await asyncio.gather(*(deliver(e) for e in deliveries))
        closed = await chaos.wait_closed(paid, within_s=240)
        await sandbox.http.aclose()
    say(
        f"{len(events)} events ({PAID} paid sessions, {EXPIRED} expired, {ASYNC_FAILED} async "
        f"failed; built in {built_s:.0f} s) delivered {COPIES}x shuffled, 20 at a time: "
        f"HTTP {dict(statuses)}; order inversions {dict(inversions(deliveries, pairs))}"
    )
    for line, n in sorted(outcomes.items()):
        say(f"  {n:4d}  {line}")
    assert statuses == {200: len(deliveries)}
    assert Counter(closed.values()) == {WorkflowExecutionStatus.COMPLETED: PAID}
    runs: Counter[str] = Counter()
    async for w in chaos.client.list_workflows("WorkflowType = 'EnrollmentWorkflow'"):
        runs[w.id] += 1
    assert len(runs) == PAID and set(runs.values()) == {1}
    assert chaos.scalar('SELECT count(*) FROM "user"') == PAID
    assert chaos.scalar("SELECT count(*) FROM enrollment WHERE status = 'READY'") == PAID
    assert chaos.scalar("SELECT count(*) FROM enrollment WHERE user_id IS NOT NULL") == PAID
    assert chaos.scalar("SELECT count(*) FROM stripe_event") == len(events)
    assert chaos.scalar("SELECT count(*) FROM stripe_event WHERE deliveries = :n", n=COPIES) == len(
        events
    )
    # The unpaid ones we had rows for were marked, never fulfilled.
    unpaid = Counter(
        r[0] for r in chaos.rows("SELECT status FROM enrollment WHERE status NOT IN ('READY')")
    )
    assert set(unpaid) <= {"EXPIRED", "PAYMENT_FAILED", "PAYMENT_PENDING"}, unpaid
