"""Whoever holds a Checkout Session id (it leaks through Referer headers, logs, screenshots)
but not the checkout cookie learns the status and step labels, nothing private; the buyer's
own browser sees plain words, and raw tool errors stay with staff."""

from typing import Any

import httpx

from core.contracts import EnrollmentStatus
from tests.utils.ops import Ops

RAW_ERROR = "admin credentials refused (test fault)"
PUBLIC_200_KEYS = {
    "success",
    "login_required",
    "login_reason",
    "track",
    "enrollment_status",
    "tools",
    "progress",
}


async def buy_in_browser(ops: Ops, email: str, track: str) -> tuple[httpx.AsyncClient, str]:
    """Checkout from a browser (its cookie jar keeps the checkout cookie), paid in the
    sandbox, whose webhook fulfils it."""
    browser = ops.http()
    r = await browser.post(
        "/api/payments/create-anonymous-checkout/",
        json={"email": email, "name": "Priya Private", "track": track},
    )
    assert r.status_code == 200, r.text
    session_id = r.json()["sessionId"]
    async with ops.sandbox() as sb:
        paid = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
        assert paid.status_code == 200, paid.text
    return browser, session_id


def no_details(progress: dict[str, Any]) -> bool:
    return all(step["detail"] == "" for step in progress["steps"])


async def verify(client: httpx.AsyncClient, session_id: str) -> httpx.Response:
    return await client.get("/api/payments/verify-session/", params={"session_id": session_id})


async def test_a_stranger_with_the_session_id_sees_labels_and_statuses_only(ops: Ops) -> None:
    ops.switch.broken.add("prefect")
    try:
        browser, sid = await buy_in_browser(ops, "priya@example.com", "DP")
        await ops.wait_status(sid, EnrollmentStatus.NEEDS_ATTENTION)
        async with httpx.AsyncClient(base_url=ops.api_url, timeout=30) as stranger:
            seen = await verify(stranger, sid)
            while seen.status_code == 202:
                assert no_details(seen.json()["progress"]), seen.text
                seen = await verify(stranger, sid)
        assert seen.status_code == 200
        body = seen.json()
        assert set(body) == PUBLIC_200_KEYS and body["login_required"] is True
        assert no_details(body["progress"])
        assert {t["tool"] for t in body["tools"]} == {"postgres", "superset", "prefect", "jupyter"}
        assert all(set(t) == {"tool", "label", "status"} for t in body["tools"])
        for secret in ("priya", "Priya", "http://", RAW_ERROR, "admin credentials"):
            assert secret not in seen.text, secret

        # The buyer's browser gets the contract's answer, in plain words.
        mine = await verify(browser, sid)
        await browser.aclose()
        assert mine.status_code == 200
        own = mine.json()
        assert own["user"]["email"] == "priya@example.com" and "access" in own
        prefect = next(s for s in own["progress"]["steps"] if s["key"] == "tool:prefect")
        assert prefect["status"] == "failed"
        assert prefect["detail"] == "Our team has been told and is finishing this"
        assert RAW_ERROR not in mine.text

        # Staff still see the raw error.
        token = await ops.staff_token()
        async with ops.http(token) as staff:
            shown = await staff.get(f"/api/staff/enrollments/{sid}")
        assert shown.status_code == 200 and RAW_ERROR in shown.text
    finally:
        ops.switch.broken.discard("prefect")


async def test_the_logged_in_student_sees_their_own_enrollment(ops: Ops) -> None:
    browser, sid = await buy_in_browser(ops, "lee@example.com", "FSD")
    await ops.wait_status(sid, EnrollmentStatus.READY)
    first = await verify(browser, sid)
    await browser.aclose()
    assert first.status_code == 200 and "access" in first.json()
    # Another device: no checkout cookie, but the student's own access token.
    async with ops.http(first.json()["access"]) as other_device:
        again = await verify(other_device, sid)
    assert again.status_code == 200 and again.json()["user"]["email"] == "lee@example.com"
    assert "access" not in again.json()  # the one auto-login was spent
    # Someone else's token is a stranger's.
    someone = await ops.student_token("someone@example.com")
    async with ops.http(someone) as other:
        theirs = await verify(other, sid)
    assert set(theirs.json()) == PUBLIC_200_KEYS
