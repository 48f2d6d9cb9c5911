"""provision_tool gives each adapter the student it provisions for: from its input when the
run's create_account put it there, from the user row for runs recorded before it did."""

import secrets
import uuid
from dataclasses import replace

import sqlalchemy as sa
from temporalio.testing import ActivityEnvironment

from activities.enrollment import EnrollmentActivities
from core.contracts import AccountResult, EnrollmentInput, ToolInput
from core.mail import Mailer
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.tools.base import ToolAccount, ToolSubject, no_progress
from devstack.mailcatcher import MailCatcher
from tests.utils.stack import make_settings


class Recording:
    name, development = "postgres", True

    def __init__(self) -> None:
        self.subjects: list[ToolSubject] = []

    def provision(self, subject: ToolSubject, progress=no_progress) -> ToolAccount:  # type: ignore[no-untyped-def]
        self.subjects.append(subject)
        return ToolAccount("postgres", "ready", url="http://tools/pg", username=subject.username)


def test_the_adapter_gets_the_user_row_with_or_without_it_in_the_input(
    clean_db: sa.Engine, database_url: str, mail: MailCatcher
) -> None:
    settings: Settings = make_settings(database_url, "127.0.0.1:9", mail)
    adapter = Recording()
    acts = EnrollmentActivities(
        settings, clean_db, {"postgres": adapter}, Mailer(settings), StripeGateway(settings)
    )
    session_id = f"cs_test_{uuid.uuid4().hex}"
    email = f"ada-{secrets.token_hex(3)}@example.com"
    inp = EnrollmentInput(session_id, email, "Ada Lovelace", "DP", 49_900, "usd")
    env = ActivityEnvironment()
    env.run(acts.record_payment, inp)
    account: AccountResult = env.run(acts.create_account, inp)
    assert (account.email, account.name) == (email, "Ada Lovelace")

    carried = ToolInput(
        account.enrollment_id, account.user_id, session_id, "postgres",
        account.username, account.email, account.name,
    )  # fmt: skip
    env.run(acts.provision_tool, carried)
    env.run(acts.provision_tool, replace(carried, username="", email="", name=""))

    expected = ToolSubject(account.user_id, account.username, email, "Ada Lovelace", session_id)
    assert adapter.subjects == [expected, expected]
