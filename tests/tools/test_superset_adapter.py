"""SupersetAdapter against a real Superset server started for the session."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import tool_servers

from core.tools.base import ToolPermanentError, ToolSubject
from core.tools.postgres_schema import PostgresSchemaAdapter, role_name
from core.tools.superset import MANAGED_ROLE, SupersetAdapter, student_object_name

pytestmark = pytest.mark.superset


@pytest.fixture
def adapter(superset_server: tool_servers.RunningServer) -> SupersetAdapter:
    return SupersetAdapter(
        superset_server.url, superset_server.admin_username, superset_server.admin_password
    )


class Admin:
    """Reads Superset's state through its API, independently of the adapter."""

    def __init__(self, server: tool_servers.RunningServer) -> None:
        self.client = httpx.Client(base_url=server.url, timeout=30)
        token = login(server, server.admin_username, server.admin_password).json()
        self.client.headers["Authorization"] = f"Bearer {token['access_token']}"

    def find(self, path: str, column: str, value: str) -> list[dict[str, Any]]:
        q = f"(filters:!((col:{column},opr:eq,value:'{value}')))"
        response = self.client.get(path, params={"q": q})
        assert response.status_code == 200
        return [item for item in response.json()["result"] if item[column] == value]

    def users(self, username: str) -> list[dict[str, Any]]:
        return self.find("/api/v1/security/users/", "username", username)

    def create_user(self, username: str, password: str, roles: list[str]) -> dict[str, Any]:
        """A user made by hand in Superset (by staff, not by Onramp)."""
        role_ids = [self.find("/api/v1/security/roles/", "name", r)[0]["id"] for r in roles]
        response = self.client.post(
            "/api/v1/security/users/",
            json={
                "active": True,
                "username": username,
                "email": f"{username}@staff.example.org",
                "first_name": "Jane",
                "last_name": "Analyst",
                "password": password,
                "roles": role_ids,
            },
        )
        assert response.status_code == 201, response.text
        (user,) = self.users(username)
        return user


def login(server: tool_servers.RunningServer, username: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/security/login",
        json={"username": username, "password": password, "provider": "db", "refresh": False},
        timeout=30,
    )


@pytest.fixture(scope="module")
def superset_admin(superset_server: tool_servers.RunningServer) -> Admin:
    return Admin(superset_server)


def test_provision_creates_a_gamma_user_who_can_log_in(
    adapter: SupersetAdapter,
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    account = adapter.provision(subject)

    (user,) = superset_admin.users(subject.username)
    assert user["active"] is True
    assert user["email"] == subject.email
    assert {"Gamma", MANAGED_ROLE} <= {role["name"] for role in user["roles"]}
    assert account.status == "ready" and account.username == subject.username
    assert account.details["user_id"] == str(user["id"])
    assert account.secret and account.secret not in account.url
    assert login(superset_server, subject.username, account.secret).status_code == 200


def test_second_provision_keeps_the_user_and_rotates_the_password(
    adapter: SupersetAdapter,
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    first = adapter.provision(subject)
    second = adapter.provision(subject)
    assert first.details["user_id"] == second.details["user_id"]
    assert len(superset_admin.users(subject.username)) == 1
    assert first.secret and second.secret
    assert login(superset_server, subject.username, second.secret).status_code == 200
    assert login(superset_server, subject.username, first.secret).status_code == 401


def test_concurrent_provisions_make_one_user(
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    barrier = threading.Barrier(3)

    def provision(_: int) -> str:
        adapter = SupersetAdapter(
            superset_server.url, superset_server.admin_username, superset_server.admin_password
        )
        barrier.wait()
        return adapter.provision(subject).details["user_id"]

    with ThreadPoolExecutor(3) as pool:
        ids = set(pool.map(provision, range(3)))
    assert len(ids) == 1
    assert len(superset_admin.users(subject.username)) == 1


def test_deprovision_deactivates_then_drop_deletes(
    adapter: SupersetAdapter,
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    assert adapter.status(subject).status == "absent"
    account = adapter.provision(subject)
    assert account.secret

    adapter.deprovision(subject)
    assert superset_admin.users(subject.username)[0]["active"] is False
    assert adapter.status(subject).status == "disabled"
    assert login(superset_server, subject.username, account.secret).status_code == 401

    assert adapter.provision(subject).status == "ready"
    assert adapter.status(subject).status == "ready"

    adapter.deprovision(subject, drop=True)
    assert superset_admin.users(subject.username) == []
    assert adapter.status(subject).status == "absent"
    adapter.deprovision(subject, drop=True)


def test_connection_to_the_students_own_schema(
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    learning_db: str,
    make_subject: Callable[..., ToolSubject],
) -> None:
    postgres = PostgresSchemaAdapter(learning_db, connection_limit=3, statement_timeout_ms=5000)
    adapter = SupersetAdapter(
        superset_server.url,
        superset_server.admin_username,
        superset_server.admin_password,
        learning_dsn_for=postgres.superset_dsn,
    )
    subject = make_subject()
    own = student_object_name(subject.username)
    first = adapter.provision(subject)
    second = adapter.provision(subject)  # rotates the companion password; must still work

    assert first.details["database_id"] == second.details["database_id"]
    (database,) = superset_admin.find("/api/v1/database/", "database_name", own)
    schemas = superset_admin.client.get(f"/api/v1/database/{database['id']}/schemas/")
    assert schemas.status_code == 200
    assert role_name(subject.username) in schemas.json()["result"]
    (user,) = superset_admin.users(subject.username)
    assert own in {role["name"] for role in user["roles"]}
    (role,) = superset_admin.find("/api/v1/security/roles/", "name", own)
    permissions = superset_admin.client.get(f"/api/v1/security/roles/{role['id']}/permissions/")
    assert [p["view_menu_name"] for p in permissions.json()["result"]] == [
        f"[{own}].(id:{database['id']})"
    ]

    adapter.deprovision(subject, drop=True)
    postgres.deprovision(subject, drop=True)
    assert superset_admin.find("/api/v1/database/", "database_name", own) == []
    assert superset_admin.find("/api/v1/security/roles/", "name", own) == []


def test_a_non_student_user_is_never_taken_over(
    adapter: SupersetAdapter, superset_server: tool_servers.RunningServer
) -> None:
    admin = ToolSubject(1, superset_server.admin_username, "x@example.org", "X Y", "cs_x")
    with pytest.raises(ToolPermanentError):
        adapter.provision(admin)
    with pytest.raises(ToolPermanentError):
        adapter.deprovision(admin)
    assert (
        login(
            superset_server, superset_server.admin_username, superset_server.admin_password
        ).status_code
        == 200
    )


def test_bad_admin_password_is_permanent(
    superset_server: tool_servers.RunningServer, make_subject: Callable[..., ToolSubject]
) -> None:
    adapter = SupersetAdapter(superset_server.url, "admin", "definitely-wrong-password")
    with pytest.raises(ToolPermanentError) as info:
        adapter.provision(make_subject())
    assert "definitely-wrong" not in str(info.value)


def test_missing_student_role_is_permanent(
    superset_server: tool_servers.RunningServer, make_subject: Callable[..., ToolSubject]
) -> None:
    adapter = SupersetAdapter(
        superset_server.url,
        superset_server.admin_username,
        superset_server.admin_password,
        student_role="NoSuchRole",
    )
    with pytest.raises(ToolPermanentError):
        adapter.provision(make_subject())


def test_a_user_onramp_did_not_create_is_never_touched(
    adapter: SupersetAdapter,
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    make_subject: Callable[..., ToolSubject],
) -> None:
    # An analyst's own Gamma account whose username a student happens to get.
    subject = make_subject("jane")
    password = "analyst-password-" + subject.username
    before = superset_admin.create_user(subject.username, password, ["Gamma"])

    with pytest.raises(ToolPermanentError, match="not created by Onramp") as refused:
        adapter.provision(subject)
    assert password not in str(refused.value)
    with pytest.raises(ToolPermanentError, match="not created by Onramp"):
        adapter.deprovision(subject)
    with pytest.raises(ToolPermanentError, match="not created by Onramp"):
        adapter.deprovision(subject, drop=True)

    (after,) = superset_admin.users(subject.username)
    assert after["active"] is True and after["roles"] == before["roles"]
    assert after["changed_on"] == before["changed_on"]
    assert login(superset_server, subject.username, password).status_code == 200


def test_a_student_that_staff_promoted_is_left_alone(
    adapter: SupersetAdapter,
    superset_server: tool_servers.RunningServer,
    superset_admin: Admin,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    account = adapter.provision(subject)
    (user,) = superset_admin.users(subject.username)
    alpha = superset_admin.find("/api/v1/security/roles/", "name", "Alpha")[0]["id"]
    roles = [role["id"] for role in user["roles"]] + [alpha]
    promoted = superset_admin.client.put(
        f"/api/v1/security/users/{user['id']}", json={"roles": roles}
    )
    assert promoted.status_code == 200, promoted.text

    with pytest.raises(ToolPermanentError, match="beyond a student's"):
        adapter.provision(subject)
    with pytest.raises(ToolPermanentError, match="beyond a student's"):
        adapter.deprovision(subject)
    assert account.secret
    assert login(superset_server, subject.username, account.secret).status_code == 200
