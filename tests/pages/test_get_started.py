"""The get-started form without JavaScript: POST /get-started creates the checkout
server-side and answers 303 to the sandbox's hosted page; mistakes re-render the form."""

from sqlmodel import Session, select

from core.models import Enrollment
from tests.pages.journey import set_cookie_headers
from tests.utils.stack import Stack


def enrollments(stack: Stack) -> list[Enrollment]:
    with Session(stack.engine) as s:
        return list(s.exec(select(Enrollment)).all())


class TestGetStartedForm:
    async def test_form_post_redirects_to_the_hosted_checkout(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            r = await http.post(
                "/get-started",
                data={"email": " Ada@Example.COM ", "name": "Ada  Lovelace", "track": "FSD"},
            )
            assert r.status_code == 303
            location = r.headers["location"]
            assert location.startswith(f"{fresh.sandbox_url}/c/pay/cs_test_")
            checkout_cookie = next(
                c for c in set_cookie_headers(r) if c.startswith("onramp_checkout=")
            )
            assert "HttpOnly" in checkout_cookie and "samesite=lax" in checkout_cookie.lower()
            hosted = await http.get(location)
        assert hosted.status_code == 200 and "ada@example.com" in hosted.text
        [row] = enrollments(fresh)
        assert (row.email, row.name, row.track) == ("ada@example.com", "Ada Lovelace", "FSD")
        assert location.endswith(row.checkout_session_id)

    async def test_continue_without_a_track_shows_step_two(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            r = await http.post(
                "/get-started", data={"email": "ada@example.com", "name": "Ada", "track": ""}
            )
        assert r.status_code == 200
        assert 'id="email-echo-value">ada@example.com</strong>' in r.text
        assert 'aria-invalid="true"' not in r.text
        assert enrollments(fresh) == []

    async def test_mistakes_rerender_the_form_with_messages(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            r = await http.post("/get-started", data={"email": "not-an-email", "name": " "})
            unknown_track = await http.post(
                "/get-started", data={"email": "ada@example.com", "name": "Ada", "track": "XX"}
            )
        assert r.status_code == 400
        assert "Enter a valid email address" in r.text and "Enter your name." in r.text
        assert r.text.count('aria-invalid="true"') == 2
        assert 'value="not-an-email"' in r.text  # what they typed stays
        assert 'role="alert"' in r.text
        assert unknown_track.status_code == 400 and "Choose a track." in unknown_track.text
        assert enrollments(fresh) == []

    async def test_names_and_emails_are_escaped(self, fresh: Stack) -> None:
        evil = '<script>alert("x")</script>'
        async with fresh.http() as http:
            r = await http.post(
                "/get-started", data={"email": f'"><img src=x>{evil}', "name": evil, "track": "DP"}
            )
        assert r.status_code == 400
        assert evil not in r.text and "<img src=x>" not in r.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in r.text

    async def test_another_sites_form_post_is_refused(self, fresh: Stack) -> None:
        data = {"email": "ada@example.com", "name": "Ada", "track": "DP"}
        async with fresh.http() as http:
            by_origin = await http.post(
                "/get-started", data=data, headers={"Origin": "https://evil.example"}
            )
            by_fetch_metadata = await http.post(
                "/get-started", data=data, headers={"Sec-Fetch-Site": "cross-site"}
            )
            same_site = await http.post(
                "/get-started", data=data, headers={"Origin": fresh.settings.public_base_url}
            )
        assert by_origin.status_code == 403 and by_fetch_metadata.status_code == 403
        assert "text/html" in by_origin.headers["content-type"]
        assert same_site.status_code == 303
        assert len(enrollments(fresh)) == 1

    async def test_track_from_the_landing_page_is_preselected(self, fresh: Stack) -> None:
        async with fresh.http() as http:
            page = await http.get("/get-started", params={"track": "FSD"})
        assert 'class="card selected" aria-labelledby="card-FSD"' in page.text
        assert "Enroll in Data Professional" in page.text
        assert "Enroll in Full-Stack Developer" in page.text
