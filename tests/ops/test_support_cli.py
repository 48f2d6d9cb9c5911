"""`onramp-support` run as a separate process against the real stack: a tool that fails
permanently is found, inspected and resolved (retry, skip, cancel), enrollments are
replayed, welcome emails resent, enrollments granted and revoked; every action audited."""

import asyncio
import re

import sqlalchemy as sa
from sqlmodel import Session, select

from core.contracts import workflow_id_for
from core.models import StripeEvent, ToolAccountRecord
from tests.utils.ops import Ops, Paid


async def stuck_on(ops: Ops, email: str, tool: str = "prefect") -> Paid:
    """A paid DP enrollment whose `tool` fails permanently: it waits for support."""
    ops.switch.broken.add(tool)
    paid = await ops.buy(email)
    await ops.wait_status(paid.session_id, "NEEDS_ATTENTION")
    return paid


def webhook_outcome(ops: Ops, event_type: str) -> str | None:
    with Session(ops.engine) as s:
        return s.exec(
            select(StripeEvent.outcome)
            .where(StripeEvent.type == event_type)
            .where(StripeEvent.outcome != "received")
        ).first()


def tool_status(ops: Ops, user_id: int, tool: str) -> str:
    with Session(ops.engine) as s:
        return s.exec(
            select(ToolAccountRecord.status)
            .where(ToolAccountRecord.user_id == user_id)
            .where(ToolAccountRecord.tool == tool)
        ).one()


async def test_failed_tool_is_listed_shown_and_retried(ops: Ops) -> None:
    paid = await stuck_on(ops, "ada@example.com")
    other = await ops.buy("bob@example.com", track="FSD")  # FSD has no prefect: finishes
    await ops.wait_status(other.session_id, "READY")

    listed = await ops.cli_json("list", "--needs-attention")
    assert [e["checkout_session_id"] for e in listed] == [paid.session_id]
    assert listed[0]["attention_reason"].startswith("prefect:")
    assert {e["checkout_session_id"] for e in await ops.cli_json("list", "--status", "ready")} == {
        other.session_id
    }
    assert [e["email"] for e in await ops.cli_json("list", "--email", "ADA@example.com")] == [
        "ada@example.com"
    ]
    assert await ops.cli_json("list", "--track", "DP", "--since", "2999-01-01") == []

    support_alert = ops.mail.wait_for(lambda m: ops.settings.support_email in m["To"], timeout=10)
    assert "prefect" in (support_alert.text or "")

    view = await ops.cli_json("show", paid.session_id)
    assert view["enrollment"]["status"] == "NEEDS_ATTENTION"
    assert "support_notified" in [t["action"] for t in view["timeline"]]
    workflow = view["workflow"]
    assert workflow["workflow_id"] == workflow_id_for(paid.session_id)
    assert workflow["status"] == "RUNNING"
    assert workflow["state"]["failed_tools"] == ["prefect"]
    assert workflow["search_attributes"]["NeedsAttention"] is True
    assert workflow["search_attributes"]["FailedTool"] == ["prefect"]
    failed = [h for h in workflow["history"] if h["event"] == "activity failed"]
    assert failed and "provision prefect" in failed[0]["detail"]
    assert "admin credentials refused" in failed[0]["detail"]

    # The human text form names the problem and the way out.
    code, text, _ = await ops.cli("show", paid.session_id)
    assert code == 0 and "NEEDS ATTENTION: prefect" in text and "TIMELINE" in text

    # A retry while the tool is still broken is accepted, fails again, and waits again.
    ops.switch.broken.clear()
    result = await ops.cli_json(
        "retry",
        paid.session_id,
        "prefect",
        "--reason",
        "rotated the Prefect key",
        actor="staff:alice",
    )
    assert result["action"] == "retry" and result["actor"] == "staff:alice"
    await ops.wait_status(paid.session_id, "READY")
    # The update's id is derived from the request (the tool's first failure), so the same
    # CLI call sent again after a timeout is the same update, applied once by Temporal.
    ids = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        async for e in ops.client.get_workflow_handle(
            workflow_id_for(paid.session_id)
        ).fetch_history_events()
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert ids == ["retry-prefect-1"]
    retried = ops.audit(paid.session_id, "tool_retry")
    assert [(a.actor, a.details["tool"], a.details["reason"]) for a in retried] == [
        ("staff:alice", "prefect", "rotated the Prefect key")
    ]
    assert await ops.cli_json("list", "--needs-attention") == []

    # Nothing waits any more: a decision is refused with a clear error and exit code 1.
    code, _, err = await ops.cli("retry", paid.session_id, "prefect", "--reason", "again")
    assert code == 1 and "Not running" in err


async def test_skip_finishes_the_enrollment_without_the_tool(ops: Ops) -> None:
    paid = await stuck_on(ops, "ada@example.com", tool="superset")
    code, _, err = await ops.cli("skip", paid.session_id, "prefect", "--reason", "wrong tool")
    assert code == 1 and "not waiting for a decision" in err
    code, _, err = await ops.cli("skip", paid.session_id, "nosuchtool", "--reason", "x")
    assert code == 1 and "Unknown tool" in err

    await ops.cli_json(
        "skip",
        paid.session_id,
        "superset",
        "--reason",
        "student does not need it",
        actor="staff:bo",
    )
    enrollment = await ops.wait_status(paid.session_id, "READY")
    assert enrollment.user_id is not None
    assert tool_status(ops, enrollment.user_id, "superset") == "skipped"
    assert tool_status(ops, enrollment.user_id, "prefect") == "ready"
    [skipped] = ops.audit(paid.session_id, "tool_skip")
    assert skipped.actor == "staff:bo" and skipped.details["reason"] == "student does not need it"


async def test_cancel_refunds_in_the_sandbox(ops: Ops) -> None:
    paid = await stuck_on(ops, "ada@example.com")
    result = await ops.cli_json(
        "cancel", paid.session_id, "--reason", "student changed their mind", actor="staff:cy"
    )
    assert result["status"] == "CANCELLED" and result["refund_id"].startswith("re_")
    charge = await ops.charge(paid.charge)
    assert charge["refunded"] is True and charge["amount_refunded"] == charge["amount"]
    [cancelled] = ops.audit(paid.session_id, "enrollment_cancelled")
    assert cancelled.actor == "staff:cy" and cancelled.details["refund_id"] == result["refund_id"]
    # Every tool of the track is ended, the one that never became ready (prefect) too.
    username = ops.user("ada@example.com").username
    assert sorted(cancelled.details["tools"]) == ["jupyter", "postgres", "prefect", "superset"]
    assert ("prefect", username) in ops.switch.deprovisioned
    # Stripe's charge.refunded for our own refund changes nothing more.
    outcome = await ops.wait_for(lambda: webhook_outcome(ops, "charge.refunded"), what="webhook")
    assert outcome in ("already_cancelled", "revoke_delivered")  # the latter if it beat the commit
    await asyncio.sleep(1)
    assert ops.enrollment(paid.session_id).status == "CANCELLED"  # type: ignore[union-attr]
    # The cohort has not started: its seat went back at once.
    [released] = ops.audit(paid.session_id, "seat_released")
    assert released.details["reason"] == "cancelled"


async def test_cancel_of_a_payment_refunded_elsewhere_ends_without_retrying(ops: Ops) -> None:
    """Stripe's charge_already_refunded is the refund done, not an error to retry forever."""
    paid = await stuck_on(ops, "ada@example.com")
    # Refunded from the dashboard; the webhook's revoke is the other path, not this one.
    async with ops.sandbox() as sb:
        await sb.post("/_sandbox/webhook_url", json={"url": None})
    try:
        ops.gateway.refund_payment(paid.payment_intent, idempotency_key=f"dash-{paid.charge}")
    finally:
        async with ops.sandbox() as sb:
            await sb.post(
                "/_sandbox/webhook_url", json={"url": f"{ops.api_url}/api/payments/webhook/"}
            )
    result = await ops.cli_json("cancel", paid.session_id, "--reason", "refunded by finance")
    assert result["status"] == "CANCELLED" and result["refund_id"] is None
    [cancelled] = ops.audit(paid.session_id, "enrollment_cancelled")
    assert cancelled.details["refund_id"] is None


async def test_cancel_without_refund_keeps_the_money(ops: Ops) -> None:
    paid = await stuck_on(ops, "ada@example.com")
    result = await ops.cli_json("cancel", paid.session_id, "--reason", "fraud check", "--no-refund")
    assert result["status"] == "CANCELLED" and result["refund_id"] is None
    assert (await ops.charge(paid.charge))["amount_refunded"] == 0


async def test_replay_runs_the_enrollment_again_from_the_start(ops: Ops) -> None:
    paid = await stuck_on(ops, "ada@example.com")
    first = await ops.client.get_workflow_handle(workflow_id_for(paid.session_id)).describe()
    ops.switch.broken.clear()

    result = await ops.cli_json(
        "replay", paid.session_id, "--reason", "prefect fixed, start over", actor="staff:dee"
    )
    assert result["previous_run"] == {"run_id": first.run_id, "status": "RUNNING"}
    assert result["run_id"] != first.run_id
    await ops.wait_status(paid.session_id, "READY")

    old = ops.client.get_workflow_handle(workflow_id_for(paid.session_id), run_id=first.run_id)
    assert (await old.describe()).status.name == "TERMINATED"  # type: ignore[union-attr]
    [replayed] = ops.audit(paid.session_id, "enrollment_replayed")
    assert replayed.actor == "staff:dee" and replayed.details["previous_run_id"] == first.run_id
    # Idempotent activities: one account, one welcome email, one payment record.
    assert len(ops.audit(paid.session_id, "account_created")) == 1
    assert len(ops.audit(paid.session_id, "payment_confirmed")) == 1
    assert len(ops.audit(paid.session_id, "welcome_email_sent")) == 1

    # A finished enrollment can be replayed too (e.g. after a tool server lost data).
    again = await ops.cli_json("replay", paid.session_id, "--reason", "superset lost its users")
    # The landed run stays open, the enrollment's owner: the replay replaces it.
    assert again["previous_run"]["status"] == "RUNNING"
    second = ops.client.get_workflow_handle(
        workflow_id_for(paid.session_id), run_id=again["run_id"]
    )
    for _ in range(200):
        state = await second.query("state")
        if state and state.get("finished"):
            break
        await asyncio.sleep(0.1)
    assert len(ops.audit(paid.session_id, "enrollment_replayed")) == 2
    # The same request again (a retried CLI) finds the run it started and starts nothing.
    same = await ops.cli_json("replay", paid.session_id, "--reason", "superset lost its users")
    assert same["run_id"] == again["run_id"] and same["already"] is True
    assert len(ops.audit(paid.session_id, "enrollment_replayed")) == 2
    assert ops.enrollment(paid.session_id).status == "READY"  # type: ignore[union-attr]
    assert len(ops.audit(paid.session_id, "welcome_email_sent")) == 1


async def test_resend_welcome_sends_a_fresh_link(ops: Ops) -> None:
    paid = await ops.buy("ada@example.com")
    await ops.wait_status(paid.session_id, "READY")
    first = ops.mail.wait_for(lambda m: "ada@example.com" in m["To"], timeout=10)
    first_link = re.search(r"/set-password\?token=(\S+)", first.text or "")
    assert first_link

    before = len([m for m in ops.mail.messages if "ada@example.com" in m["To"]])
    result = await ops.cli_json("resend-welcome", paid.session_id, actor="staff:eve")
    assert result["to"] == "ada@example.com" and result["kind"] == "set_password"
    welcomes = [m for m in ops.mail.messages if "ada@example.com" in m["To"]]
    assert len(welcomes) == before + 1
    second_link = re.search(r"/set-password\?token=(\S+)", welcomes[-1].text or "")
    assert second_link and second_link.group(1) != first_link.group(1)
    [resent] = ops.audit(paid.session_id, "welcome_email_resent")
    assert resent.actor == "staff:eve"
    # Followed: the older link no longer works, the newest does.
    async with ops.http() as http:
        for link, wanted in ((first_link, 400), (second_link, 200)):
            r = await http.post(
                "/api/auth/set-password",
                json={"token": link.group(1), "password": "a new long passphrase 1"},
            )
            assert r.status_code == wanted, r.text


async def test_grant_enrolls_without_payment(ops: Ops) -> None:
    code, _, err = await ops.cli(
        "grant", "--email", "fay@example.com", "--name", "Fay", "--track", "FSD", "--reason", " "
    )
    assert code != 0 and "reason" in err

    result = await ops.cli_json(
        "grant",
        "--email",
        "Fay@Example.com",
        "--name",
        "Fay Scholar",
        "--track",
        "fsd",
        "--reason",
        "scholarship 2026",
        actor="staff:gil",
    )
    key = result["checkout_session_id"]
    assert re.fullmatch(r"grant-[0-9a-f]{32}", key) and result["workflow_id"] == f"enrollment-{key}"
    enrollment = await ops.wait_status(key, "READY")
    assert enrollment.email == "fay@example.com" and enrollment.track == "FSD"
    assert enrollment.amount == 0 and enrollment.payment_intent_id is None
    [granted] = ops.audit(key, "enrollment_granted")
    assert granted.actor == "staff:gil" and granted.details["reason"] == "scholarship 2026"
    ops.mail.wait_for(lambda m: "fay@example.com" in m["To"], timeout=10)

    code, _, err = await ops.cli(
        "grant", "--email", "fay@example.com", "--name", "Fay", "--track", "FSD", "--reason", "x"
    )
    assert code == 1 and "already enrolled in FSD" in err


async def test_revoke_refunds_then_withdraws_access(ops: Ops) -> None:
    paid = await ops.buy("ada@example.com")
    enrollment = await ops.wait_status(paid.session_id, "READY")
    assert enrollment.user_id is not None

    result = await ops.cli_json(
        "revoke", paid.session_id, "--reason", "chargeback threat", actor="staff:hal"
    )
    assert result["status"] == "REVOKED" and result["refund_id"].startswith("re_")
    # Handled by the enrollment's own run, its owner: no second workflow.
    assert result["workflow_id"] == workflow_id_for(paid.session_id)
    assert sorted(result["tools"]) == ["jupyter", "postgres", "prefect", "superset"]
    assert (await ops.charge(paid.charge))["refunded"] is True
    assert ops.user("ada@example.com").is_active is False
    assert tool_status(ops, enrollment.user_id, "superset") == "disabled"
    [revoked] = ops.audit(paid.session_id, "enrollment_revoked")
    assert revoked.actor == "staff:hal" and revoked.details["cause"] == "support"
    assert ops.audit(paid.session_id, "revoke_requested")[0].actor == "staff:hal"

    code, _, err = await ops.cli("revoke", paid.session_id, "--reason", "twice")
    assert code == 1 and "already revoked" in err


async def test_revoke_stops_a_running_enrollment_first(ops: Ops) -> None:
    paid = await stuck_on(ops, "ada@example.com")
    enrollment = ops.enrollment(paid.session_id)
    assert enrollment is not None and enrollment.user_id is not None

    result = await ops.cli_json("revoke", paid.session_id, "--reason", "fraud", actor="staff:ian")
    assert result["status"] == "REVOKED" and result["user_active"] is False
    # The enrollment's own run stopped provisioning (the tool waiting for support waits no
    # more), then took every tool of the track away: one run, nothing cancelled.
    handle = ops.client.get_workflow_handle(workflow_id_for(paid.session_id))
    assert (await handle.describe()).status.name == "RUNNING"  # type: ignore[union-attr]
    assert not ops.audit(paid.session_id, "enrollment_cancelled")
    [suspended] = ops.audit(paid.session_id, "access_suspended")
    assert suspended.details["previous_status"] == "NEEDS_ATTENTION"
    assert tool_status(ops, enrollment.user_id, "superset") == "disabled"
    charge = await ops.charge(paid.charge)
    assert charge["refunded"] is True and len(charge["refunds"]["data"]) == 1


async def test_a_step_refused_for_good_goes_to_support_who_retries_it(ops: Ops) -> None:
    """Unlocking the first project refused (the track has none): the run used to fail with
    the tools made and nobody told; now the step waits for support like a tool does."""
    with ops.engine.begin() as conn:
        conn.execute(sa.text("UPDATE project SET track = 'FSD-OFF' WHERE track = 'FSD'"))
    try:
        paid = await ops.buy("ada@example.com", "FSD")
        await ops.wait_status(paid.session_id, "NEEDS_ATTENTION")
        [flag] = await ops.wait_for(
            lambda: ops.audit(paid.session_id, "support_notified"), what="support told"
        )
        assert flag.details["tool"] == "project"
        assert flag.details["error_type"] == "InvalidEnrollment"
        ops.mail.wait_for(lambda m: "needs attention" in str(m["Subject"]), timeout=10)
        assert not ops.audit(paid.session_id, "welcome_email_sent")
        code, _, err = await ops.cli("skip", paid.session_id, "project", "--reason", "x")
        assert code == 1 and "Unknown tool" in err
    finally:
        with ops.engine.begin() as conn:
            conn.execute(sa.text("UPDATE project SET track = 'FSD' WHERE track = 'FSD-OFF'"))
    await ops.cli_json(
        "retry", paid.session_id, "project", "--reason", "restored the projects", actor="staff:bo"
    )
    await ops.wait_status(paid.session_id, "READY")
    [retried] = ops.audit(paid.session_id, "step_retry")
    assert retried.actor == "staff:bo" and retried.details["tool"] == "project"
    assert len(ops.audit(paid.session_id, "welcome_email_sent")) == 1
