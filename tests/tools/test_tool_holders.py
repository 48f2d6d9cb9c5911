"""`holders()` lists what a tool really holds, mapped back to usernames, and nothing else."""

from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from activities.tools.base import Held, ToolSubject
from activities.tools.postgres_schema import PostgresSchemaAdapter, role_name


@pytest.mark.postgres
def test_postgres_holders_are_the_student_roles_only(
    learning_db: str, make_subject: Callable[..., ToolSubject], run_id: str
) -> None:
    adapter = PostgresSchemaAdapter(learning_db)
    kept, ended = make_subject("kept"), make_subject("ended")
    adapter.provision(kept)
    adapter.provision(ended)
    adapter.superset_dsn(kept)  # its companion role is not a student of its own
    adapter.deprovision(ended)
    # A role with our naming that Onramp did not make (not in the student group).
    stranger = f"student_t{run_id}_stranger"
    with psycopg.connect(learning_db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))

    mine = [h for h in adapter.holders() if h.username.startswith(f"t{run_id}_")]

    assert mine == sorted(
        [
            Held(kept.username, "ready", role_name(kept.username)),
            Held(ended.username, "disabled", role_name(ended.username)),
        ]
    )
    adapter.deprovision(ended, drop=True)
    assert ended.username not in {h.username for h in adapter.holders()}


def test_development_stand_in_holds_what_it_provisioned() -> None:
    from activities.tools.development import DevelopmentToolAdapter, reset_development_state

    reset_development_state()
    prefect, jupyter = DevelopmentToolAdapter("prefect"), DevelopmentToolAdapter("jupyter")
    a = ToolSubject(1, "ada", "ada@example.com", "Ada", "cs_1")
    b = ToolSubject(2, "bob", "bob@example.com", "Bob", "cs_2")
    prefect.provision(a)
    prefect.provision(b)
    jupyter.provision(a)
    prefect.deprovision(b)
    assert prefect.holders() == [Held("ada", "ready", "ada"), Held("bob", "disabled", "bob")]
    assert jupyter.holders() == [Held("ada", "ready", "ada")]
    reset_development_state()
