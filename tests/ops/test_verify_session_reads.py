"""verify-session reads the workflow: a query while it runs, its result once completed (kept
briefly for repeat polls), and what it last published when no worker answers the query."""

import secrets
import time

from api.payments import verify
from core.contracts import EnrollmentInput, EnrollmentState, workflow_id_for
from core.enrollment.runs import start_options
from tests.utils.ops import Ops
from workflows.enrollment import EnrollmentWorkflow

VERIFY = "/api/payments/verify-session/"


async def test_no_worker_answering_gives_202_from_what_was_published(ops: Ops) -> None:
    """A run whose task queue nobody polls: the query cannot be answered; the student still
    gets a 202 with progress, within the query timeout, not a 500 or a hang."""
    session_id = f"cs_test_{secrets.token_hex(12)}"
    inp = EnrollmentInput(session_id, "nobody@example.com", "No Body", "DP", 49_900, "usd")
    handle = await ops.client.start_workflow(
        EnrollmentWorkflow.run,
        inp,
        id=workflow_id_for(session_id),
        task_queue=f"unpolled-{secrets.token_hex(4)}",
        **start_options(inp),
    )
    try:
        async with ops.http() as http:
            began = time.monotonic()
            r = await http.get(VERIFY, params={"session_id": session_id})
            took = time.monotonic() - began
        assert r.status_code == 202, r.text
        assert r.json()["progress"]["steps_done"] == 0 and "retry-after" in r.headers
        # The step list was published with the start (the memo), before any worker ran it.
        labels = [step["label"] for step in r.json()["progress"]["steps"]]
        assert labels[:2] == ["Payment confirmed", "Account created"] and len(labels) == 8
        assert took < 10, took
    finally:
        await handle.terminate("test done")


async def test_finished_enrollment_answers_200_on_every_poll(ops: Ops) -> None:
    paid = await ops.buy("ada@example.com")
    await ops.wait_status(paid.session_id, "READY")
    await ops.fulfilled(paid.session_id)
    async with ops.http() as http:
        bodies = [
            (await http.get(VERIFY, params={"session_id": paid.session_id})) for _ in range(3)
        ]
    assert [r.status_code for r in bodies] == [200, 200, 200]
    # Not the buyer's browser: never tokens, however the state was read.
    assert all(r.json()["login_required"] and "access" not in r.json() for r in bodies)
    assert {r.json()["enrollment_status"] for r in bodies} == {"READY"}


def test_finished_states_expire_and_stay_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    monkeypatch.setattr(verify.time, "monotonic", lambda: now[0])
    cache = verify.FinishedStates(size=2, ttl_s=15)
    states = {sid: EnrollmentState(sid, "a@example.com", "DP", "READY") for sid in "abc"}
    cache.put("a", states["a"])
    assert cache.get("a") is states["a"]
    now[0] += 11  # within 3/4 of the ttl: still there
    assert cache.get("a") is states["a"]
    now[0] += 5  # past the ttl: a replayed run must show through
    assert cache.get("a") is None
    for sid in "abc":
        cache.put(sid, states[sid])
    assert cache.get("a") is None and cache.get("c") is states["c"]  # oldest went first
