"""`holders()` lists what a tool really holds, mapped back to usernames, and nothing else."""

from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
import tool_servers
from psycopg import sql

from core.tools.base import Held, ToolSubject
from core.tools.postgres_schema import PostgresSchemaAdapter, role_name
from core.tools.prefect import PrefectAdapter, authorization, work_pool_name
from core.tools.process_workspace import (
    STATE_FILE,
    Mode,
    ProcessWorkspaceAdapter,
    WorkspaceState,
    _write_state,
)
from core.tools.superset import SupersetAdapter


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

    # Other tests of this session share the server: only this test's names are counted, and
    # the look-alike is never listed.
    held = adapter.holders()
    assert f"t{run_id}_stranger" not in {h.username for h in held}
    mine = [h for h in held if h.username in (kept.username, ended.username)]
    assert mine == sorted(
        [
            Held(kept.username, "ready", role_name(kept.username)),
            Held(ended.username, "disabled", role_name(ended.username)),
        ]
    )
    adapter.deprovision(ended, drop=True)
    assert ended.username not in {h.username for h in adapter.holders()}


def test_development_stand_in_holds_what_it_provisioned() -> None:
    from core.tools.development import DevelopmentToolAdapter, reset_development_state

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


def test_process_workspaces_are_listed_from_their_state_files(tmp_path: Path) -> None:
    adapter = ProcessWorkspaceAdapter("jupyter", "/bin/false", tmp_path, idle_timeout_s=0)

    def workspace(folder: str, tool: str, username: str, mode: Mode) -> None:
        base = tmp_path / folder / tool
        base.mkdir(parents=True)
        state = WorkspaceState(tool, username, 1, "cs_1", 20001, "secret", mode=mode)
        _write_state(base / STATE_FILE, state)

    workspace("ada", "jupyter", "ada", "running")
    workspace("bob", "jupyter", "bob", "culled")  # comes back on its next status: access
    workspace("cleo", "jupyter", "cleo", "stopped")  # deprovisioned
    workspace("dan", "codeserver", "dan", "running")  # another tool's
    workspace("eve", "jupyter", "mallory", "running")  # a folder that is not its owner's
    (tmp_path / "fay" / "jupyter").mkdir(parents=True)  # no state: nothing held

    assert [(h.username, h.status) for h in adapter.holders()] == [
        ("ada", "ready"),
        ("bob", "ready"),
        ("cleo", "disabled"),
    ]
    adapter.close()


@pytest.mark.prefect
def test_prefect_holders_are_the_student_pools(
    prefect_server: tool_servers.RunningServer,
    make_subject: Callable[..., ToolSubject],
    run_id: str,
) -> None:
    adapter = PrefectAdapter(prefect_server.url, auth_string=prefect_server.auth_string)
    kept, paused = make_subject("kept"), make_subject("paused")
    adapter.provision(kept)
    adapter.provision(paused)
    adapter.deprovision(paused)
    with httpx.Client(
        base_url=prefect_server.url,
        headers=authorization(prefect_server.auth_string),
        timeout=10,
    ) as client:  # a pool someone else made, not named like ours
        r = client.post("/work_pools/", json={"name": f"team-{run_id}", "type": "process"})
        assert r.status_code in (201, 409), r.text

    # Other tests of this session share the server: only this test's pools are counted.
    mine = [h for h in adapter.holders() if h.username in (kept.username, paused.username)]
    assert mine == sorted(
        [
            Held(kept.username, "ready", work_pool_name(kept.username)),
            Held(paused.username, "disabled", work_pool_name(paused.username)),
        ]
    )
    assert all(h.name.startswith("student_") for h in adapter.holders())
    adapter.deprovision(paused, drop=True)
    assert paused.username not in {h.username for h in adapter.holders()}


@pytest.mark.superset
def test_superset_holders_are_the_users_onramp_marked(
    superset_server: tool_servers.RunningServer,
    make_subject: Callable[..., ToolSubject],
    run_id: str,
) -> None:
    adapter = SupersetAdapter(
        superset_server.url, superset_server.admin_username, superset_server.admin_password
    )
    kept, ended, analyst = make_subject("kept"), make_subject("ended"), make_subject("jane")
    adapter.provision(kept)
    adapter.provision(ended)
    adapter.deprovision(ended)
    # A user made by hand in Superset, named like a student: never ours.
    with httpx.Client(base_url=superset_server.url, timeout=30) as client:
        token = client.post(
            "/api/v1/security/login",
            json={
                "username": superset_server.admin_username,
                "password": superset_server.admin_password,
                "provider": "db",
                "refresh": False,
            },
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        roles = client.get(
            "/api/v1/security/roles/", params={"q": "(filters:!((col:name,opr:eq,value:Gamma)))"}
        ).json()["result"]
        r = client.post(
            "/api/v1/security/users/",
            json={
                "active": True,
                "username": analyst.username,
                "email": analyst.email,
                "first_name": "Jane",
                "last_name": "Analyst",
                "password": "analyst-password-1",
                "roles": [roles[0]["id"]],
            },
        )
        assert r.status_code == 201, r.text

    held = adapter.holders()
    # Other tests of this session share the server: only this test's users are counted, and
    # the hand-made look-alike is never listed.
    assert analyst.username not in {h.username for h in held}
    mine = [h for h in held if h.username in (kept.username, ended.username)]
    assert mine == sorted(
        [
            Held(kept.username, "ready", kept.username),
            Held(ended.username, "disabled", ended.username),
        ]
    )
    assert superset_server.admin_username not in {h.username for h in held}
