"""The staff API and funnel page: the same support actions as the CLI, for logged-in staff
only (students get 403 on every one), audited with the staff member as actor."""

from typing import Any

from fastapi.routing import APIRoute
from sqlmodel import Session, select

from api.staff.endpoints import pages_router, router
from core.models import AuditEvent
from tests.utils.ops import Ops

BODIES: dict[str, dict[str, Any]] = {
    "retry": {"tool": "prefect", "reason": "x"},
    "skip": {"tool": "prefect", "reason": "x"},
    "cancel": {"reason": "x"},
    "replay": {"reason": "x"},
    "revoke": {"reason": "x"},
    "grants": {"email": "x@example.com", "name": "X", "track": "DP", "reason": "x"},
}


def staff_routes() -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every staff endpoint (method, path, a valid body), read from the routers themselves."""
    found = []
    for route in [*router.routes, *pages_router.routes]:
        assert isinstance(route, APIRoute)
        if route.path.endswith(".css"):
            continue  # the stylesheet holds no data
        path = route.path.replace("{session_id}", "cs_test_a1b2c3d4e5f6a7b8")
        for method in route.methods or ():
            body = BODIES.get(path.rsplit("/", 1)[-1]) if method == "POST" else None
            found.append((method, path, body))
    return found


async def test_students_and_strangers_are_refused_every_staff_endpoint(ops: Ops) -> None:
    routes = staff_routes()
    assert len(routes) >= 12
    student = await ops.student_token()
    async with ops.http(student) as as_student, ops.http() as anonymous:
        for method, path, body in routes:
            r = await as_student.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            if path.startswith("/api/"):
                assert r.json()["error"] == "Forbidden"
            else:  # a page: the site's HTML error page
                assert r.headers["content-type"].startswith("text/html")
            r = await anonymous.request(method, path, json=body)
            assert r.status_code == 401, (method, path, r.status_code)
    # Nothing was done on their behalf.
    assert ops.enrollment("cs_test_a1b2c3d4e5f6a7b8") is None


async def test_staff_resolve_an_enrollment_through_the_api(ops: Ops) -> None:
    token = await ops.staff_token("sam.staff@staff.example.com")
    ops.switch.broken.add("prefect")
    paid = await ops.buy("ada@example.com")
    await ops.wait_status(paid.session_id, "NEEDS_ATTENTION")

    async with ops.http(token) as http:
        r = await http.get("/api/staff/enrollments", params={"needs_attention": "true"})
        assert r.status_code == 200
        assert [e["checkout_session_id"] for e in r.json()] == [paid.session_id]
        r = await http.get(f"/api/staff/enrollments/{paid.session_id}")
        assert r.status_code == 200
        assert r.json()["workflow"]["state"]["failed_tools"] == ["prefect"]
        assert r.json()["workflow"]["ui_url"].endswith("/history")

        r = await http.post(
            f"/api/staff/enrollments/{paid.session_id}/retry",
            json={"tool": "superset", "reason": "wrong one"},
        )
        assert r.status_code == 409 and r.json()["error"] == "Decision refused"

        ops.switch.broken.clear()
        r = await http.post(
            f"/api/staff/enrollments/{paid.session_id}/retry",
            json={"tool": "prefect", "reason": "key rotated"},
        )
        assert r.status_code == 200, r.text
        await ops.wait_status(paid.session_id, "READY")
        [retried] = ops.audit(paid.session_id, "tool_retry")
        assert retried.actor == "staff:sam.staff@staff.example.com"

        r = await http.post(f"/api/staff/enrollments/{paid.session_id}/resend-welcome")
        assert r.status_code == 200, r.text
        assert ops.audit(paid.session_id, "welcome_email_resent")[0].actor == (
            "staff:sam.staff@staff.example.com"
        )

        r = await http.post(
            "/api/staff/grants",
            json={"email": "fay@example.com", "name": "Fay", "track": "FSD", "reason": "partner"},
        )
        assert r.status_code == 201, r.text
        await ops.wait_status(r.json()["checkout_session_id"], "READY")

        r = await http.get("/api/staff/enrollments/cs_test_unknown00000000")
        assert r.status_code == 404

        r = await http.get("/api/staff/funnel", params={"days": 7})
        assert r.status_code == 200
        funnel = r.json()
        assert funnel["by_track"]["DP"] == {
            "checkout_created": 1,
            "paid": 1,
            "enrolled": 1,
            "first_login": 0,
        }
        assert funnel["grants"] == 1
        [today] = [row for row in funnel["payment_success"] if row["track"] == "DP"]
        assert today["rate"] == 1.0
        provisioning = {row["tool"]: row for row in funnel["provisioning"]}
        assert provisioning["prefect"]["count"] == 1
        assert provisioning["prefect"]["p95_seconds"] >= provisioning["postgres"]["p50_seconds"]

        page = await http.get("/staff/funnel")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Enrollment funnel" in page.text and "prefect" in page.text
        assert "<style" not in page.text and 'href="/staff/staff.css"' in page.text
        css = await http.get("/staff/staff.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_create_staff_from_the_cli_then_use_the_api(ops: Ops) -> None:
    env = ops.cli_env(ONRAMP_STAFF_PASSWORD="a long staff password 42")
    code, out, err = await ops.cli(
        "create-staff",
        "--email",
        "Nia@Staff.Example.com",
        "--name",
        "Nia",
        actor="staff:root",
        env=env,
    )
    assert code == 0, err
    assert "nia@staff.example.com" in out
    token = await ops.login("nia@staff.example.com", "a long staff password 42")
    async with ops.http(token) as http:
        r = await http.post("/api/staff/reconcile", json={"lookback_hours": 1})
        assert r.status_code == 200, r.text
        assert r.json()["actor"] == "staff:nia@staff.example.com"
    user = ops.user("nia@staff.example.com")
    with Session(ops.engine) as s:
        [created] = s.exec(
            select(AuditEvent)
            .where(AuditEvent.action == "staff_created")
            .where(AuditEvent.user_id == user.id)
        ).all()
        assert created.actor == "staff:root"

    code, _, err = await ops.cli(
        "create-staff", "--email", "nia@staff.example.com", "--name", "Nia", env=env
    )
    assert code == 1 and "already exists" in err
