"""Staff's cohorts: `onramp-support cohort list|create|edit|settle`, the staff API's
/api/staff/cohorts and the funnel's cohort counts."""

from sqlmodel import Session, col, select

from core.models import AuditEvent
from tests.utils.ops import Ops


def audit_actions(ops: Ops, action: str) -> list[AuditEvent]:
    with Session(ops.engine) as db:
        return list(db.exec(select(AuditEvent).where(col(AuditEvent.action) == action)).all())


async def test_cli_creates_lists_and_edits_cohorts(ops: Ops) -> None:
    created = await ops.cli_json(
        "cohort", "create", "DP-2027-05", "--track", "DP", "--starts", "2027-05-03",
        "--size", "2", "--state", "on_sale",
    )  # fmt: skip
    assert created["code"] == "DP-2027-05" and created["seats_left"] == 2
    assert created["starts_at"].startswith("2027-05-03")
    async with ops.http() as http:
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": "a@example.com", "name": "A", "track": "DP", "cohort": "DP-2027-05"},
        )
        assert r.status_code == 200
    listed = await ops.cli_json("cohort", "list", "--track", "DP")
    row = next(c for c in listed if c["code"] == "DP-2027-05")
    assert (row["held"], row["seats_left"], row["ledger_consistent"]) == (1, 1, True)

    # Never below what is held and taken: the cap does not start from zero after an edit.
    code, _, err = await ops.cli("cohort", "edit", "DP-2027-05", "--size", "0")
    assert code == 1 and "cannot go below 1" in err
    edited = await ops.cli_json("cohort", "edit", "DP-2027-05", "--size", "5", "--state", "closed")
    assert (edited["size"], edited["held"], edited["state"]) == (5, 1, "closed")
    [change] = audit_actions(ops, "cohort_edited")
    assert change.actor == "staff:tester" and change.details["changes"]["size"] == [2, 5]
    code, _, err = await ops.cli(
        "cohort", "create", "DP-2027-05", "--track", "DP", "--starts", "2027-05-03", "--size", "1"
    )
    assert code == 1 and "exists already" in err
    code, _, err = await ops.cli("cohort", "edit", "DP-NONE", "--size", "3")
    assert code == 1 and "no cohort DP-NONE" in err
    text_code, text, _ = await ops.cli("cohort", "list")
    assert text_code == 0 and "DP-2027-05" in text and "SEATS_LEFT" in text


async def test_staff_api_cohorts_and_funnel(ops: Ops) -> None:
    staff = await ops.staff_token()
    student = await ops.student_token()
    async with ops.http(staff) as http, ops.http(student) as as_student:
        assert (await as_student.get("/api/staff/cohorts")).status_code == 403
        r = await http.post(
            "/api/staff/cohorts",
            json={"code": "FSD-2027-04", "track": "FSD", "starts_at": "2027-04-05T09:00:00Z",
                  "size": 1, "state": "on_sale"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        bad = await http.post(
            "/api/staff/cohorts",
            json={"code": "bad code", "track": "FSD", "starts_at": "2027-04-05", "size": 1},
        )
        assert bad.status_code == 400
        buy = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": "f@example.com", "name": "F", "track": "FSD", "cohort": "FSD-2027-04"},
        )
        assert buy.status_code == 200
        full = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": "g@example.com", "name": "G", "track": "FSD", "cohort": "FSD-2027-04"},
        )
        assert full.status_code == 409
        joined = await http.post(
            "/api/payments/waitlist/",
            json={"email": "g@example.com", "name": "G", "track": "FSD", "cohort": "FSD-2027-04"},
        )
        assert joined.status_code == 201
        shrink = await http.patch("/api/staff/cohorts/FSD-2027-04", json={"size": 0})
        assert shrink.status_code == 400  # below 1: the schema's own bound
        grow = await http.patch("/api/staff/cohorts/FSD-2027-04", json={"size": 2})
        assert grow.status_code == 200 and grow.json()["size"] == 2
        missing = await http.patch("/api/staff/cohorts/FSD-NONE", json={"size": 2})
        assert missing.status_code == 404
        listed = (await http.get("/api/staff/cohorts", params={"track": "FSD"})).json()
        row = next(c for c in listed if c["code"] == "FSD-2027-04")
        # Grown by one while someone waits: the new seat is the waitlist's, not the public's.
        assert (row["held"], row["waiting"], row["seats_left"]) == (1, 1, 0)
        settled = await ops.cli_json("cohort", "settle")
        assert settled["offers"] == 1
        funnel = (await http.get("/api/staff/funnel")).json()
        page = await http.get("/staff/funnel")
    counts = next(c for c in funnel["cohorts"] if c["code"] == "FSD-2027-04")
    assert counts["holds"] == 1 and counts["waitlist_joins"] == 1 and counts["offers"] == 1
    assert counts["held"] == 2 and counts["seats_left"] == 0
    assert page.status_code == 200 and "FSD-2027-04" in page.text
