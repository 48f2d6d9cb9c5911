"""The payment result pages and the student's dashboard, after a real sandbox payment."""

import re

from sqlmodel import Session, select

from core.contracts import EnrollmentStatus
from core.models import AuditEvent, Enrollment, ToolAccountRecord
from tests.pages.journey import PASSWORD, cookie, create_user, enroll
from tests.utils.helpers import wait_until
from tests.utils.stack import Stack

SESSION_ID = "cs_test_a1B2c3D4e5F6g7H8i9J0"


class TestSuccessPage:
    async def test_is_private_and_never_echoes_the_session_id(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get("/payment/success", params={"session_id": SESSION_ID})
        assert page.status_code == 200
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert SESSION_ID not in page.text
        assert 'aria-live="polite"' in page.text
        assert re.search(r'<script src="/static/success\.js\?v=\w+" defer>', page.text)

    async def test_a_tampered_session_id_is_a_human_400(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get(
                "/payment/success", params={"session_id": '"><script>alert(1)</script>'}
            )
        assert page.status_code == 400
        assert "text/html" in page.headers["content-type"]
        assert "<script>alert" not in page.text and "alert(1)" not in page.text
        assert "Start again" in page.text


class TestDashboard:
    async def test_requires_login(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            r = await http.get("/student/dashboard")
            api = await http.get("/api/student/tools/superset/credentials")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=/student/dashboard"
        assert api.status_code == 401

    async def test_after_payment_shows_track_projects_and_tools(self, fresh: Stack) -> None:
        name = "Ada <b>Lovelace</b>"
        async with fresh.http() as http:
            verified = await enroll(fresh, http, "ada@example.com", name=name, track="DP")
            body = verified.json()
            assert body["login_required"] is False
            access = cookie(http, "onramp_access")
            assert access
            page = await http.get("/student/dashboard")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        html = page.text
        assert "Welcome, Ada &lt;b&gt;Lovelace&lt;/b&gt;" in html
        assert "Data Professional track" in html
        assert "Project 1: SQL foundations" in html
        assert html.count('class="badge badge-ok">Unlocked') == 1
        assert html.count('class="badge">Locked') == 2
        for label in ("PostgreSQL schema", "Superset", "Prefect", "Jupyter"):
            assert f"<h4>{label}</h4>" in html
        assert "Development stand-in" in html
        # Tokens live in HttpOnly cookies only, never in the page.
        assert access not in html and body["refresh"] not in html
        assert "Log out" in html

    async def test_shows_when_part_of_the_setup_needs_attention(self, fresh: Stack) -> None:
        user_id = create_user(fresh.engine, "grace@example.com", name="Grace Hopper")
        with Session(fresh.engine) as s:
            enrollment = Enrollment(
                checkout_session_id="cs_test_needsattention000000",
                workflow_id="enrollment-cs_test_needsattention000000",
                email="grace@example.com",
                name="Grace Hopper",
                track="DP",
                status=EnrollmentStatus.NEEDS_ATTENTION,
                needs_attention=True,
                user_id=user_id,
            )
            s.add(enrollment)
            s.flush()
            s.add(ToolAccountRecord(user_id=user_id, tool="superset", status="failed"))
            s.add(ToolAccountRecord(user_id=user_id, tool="postgres", status="ready", url="x"))
            s.commit()
        async with fresh.http() as http:
            await http.post("/login", data={"email": "grace@example.com", "password": PASSWORD})
            page = await http.get("/student/dashboard")
        assert page.status_code == 200
        assert "Part of your setup needs our team" in page.text
        assert "Needs attention: our team is on it" in page.text  # superset
        assert page.text.count(">Being set up<") == 2  # prefect and jupyter not started
        assert "Open PostgreSQL schema" not in page.text  # "x" is not a web address

    async def test_credentials_are_revealed_on_demand_only(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            await enroll(fresh, http, "grace@example.com", name="Grace", track="FSD")
            creds = await http.get("/api/student/tools/codeserver/credentials")
            assert creds.status_code == 200
            assert creds.headers["cache-control"] == "no-store"
            secret = creds.json()["password"]
            assert secret and creds.json()["username"]
            hidden = await http.get("/student/dashboard")
            revealed = await http.get("/student/dashboard", params={"reveal": "codeserver"})
            not_mine = await http.get("/api/student/tools/superset/credentials")
            unknown = await http.get("/api/student/tools/..%2Fetc/credentials")
        assert secret not in hidden.text
        assert 'aria-expanded="false"' in hidden.text
        assert secret in revealed.text and 'aria-expanded="true"' in revealed.text
        assert revealed.headers["cache-control"] == "no-store"
        assert not_mine.status_code == 404 and unknown.status_code == 404

        def revealed_audits() -> list[AuditEvent]:
            with Session(fresh.engine) as s:
                query = select(AuditEvent).where(AuditEvent.action == "credentials_revealed")
                return list(s.exec(query).all())

        # SessionDep commits just after the response is sent: allow it a moment.
        audits = wait_until(lambda: len(revealed_audits()) == 2 and revealed_audits(), 5)
        assert [a.details["tool"] for a in audits] == ["codeserver", "codeserver"]
        assert all(secret not in str(a.details) for a in audits)
