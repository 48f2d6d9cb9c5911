"""Superset adapter: a Gamma user per student and, optionally, a connection to their schema.

Everything goes through Superset's REST API (Flask-AppBuilder's security API must be on:
`FAB_ADD_SECURITY_API = True`). Users, roles and database connections are found by name
before anything is created, and a failed create is followed by a second look-up, so
retries and concurrent calls never duplicate them (Superset answers a duplicate role with a
500, a duplicate user with a 422).

A provision sets a fresh password and returns it (the same choice as the Postgres adapter:
the stored secret is always the latest one). Ownership is marked the way the workspace
adapter labels its containers: every user this adapter creates carries the role
`onramp_managed` (no permissions; Superset 4.x has no free field or groups to mark), and a
user without it is never changed, disabled or deleted, whatever its roles, so a student
called `admin` or an analyst's `jane` cannot be taken over. Nor is a marked user whom staff
gave more than the student roles.

With `learning_dsn_for`, the student also gets a database connection `student_<username>`
to their own schema and a role `student_<username>` granting access to it alone.
"""

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from core.contracts import ToolStatus
from core.tools._http import json_of, request, rison_string
from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolPermanentError,
    ToolSubject,
    ToolTransientError,
    no_progress,
)
from core.tracks import TOOL_SUPERSET

logger = logging.getLogger(__name__)

SECURITY = "/api/v1/security"
DATABASE_ACCESS = "database_access"
# Carried by every user this adapter creates; grants nothing.
MANAGED_ROLE = "onramp_managed"
PAGE_SIZE = 100  # Flask-AppBuilder's default FAB_API_MAX_PAGE_SIZE

LearningDsnFor = Callable[[ToolSubject], str | None]


def student_object_name(username: str) -> str:
    """Name of the student's own Superset role and database connection."""
    return f"student_{username}"


def _eq_filter(column: str, value: str) -> dict[str, str]:
    return {"q": f"(filters:!((col:{column},opr:eq,value:{rison_string(value)})))"}


class SupersetAdapter:
    name = TOOL_SUPERSET
    development = False

    def __init__(
        self,
        base_url: str,
        admin_username: str,
        admin_password: str,
        student_role: str = "Gamma",
        learning_dsn_for: LearningDsnFor | None = None,
        extra_roles: tuple[str, ...] = ("sql_lab",),
        timeout_s: float = 30.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._admin_username = admin_username
        self._admin_password = admin_password
        self._student_role = student_role
        self._learning_dsn_for = learning_dsn_for
        self._extra_roles = extra_roles
        self._timeout = timeout_s

    # -- the ToolAdapter interface ------------------------------------------------------

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        password = secrets.token_urlsafe(18)
        own_name = student_object_name(subject.username)
        details: dict[str, str] = {}
        with self._session() as client:
            existing = self._find_user(client, subject.username)
            if existing is not None:
                self._check_ours(existing, own_name)  # before creating anything for them
            role_ids: list[int] = []
            for role_name in (self._student_role, *self._extra_roles):
                role_id = self._role_id(client, role_name)
                if role_id is not None:
                    role_ids.append(role_id)
                elif role_name == self._student_role:
                    raise ToolPermanentError(f"superset: role {role_name!r} does not exist")
                else:
                    logger.warning("superset: optional role %s does not exist; skipped", role_name)
            role_ids.append(self._ensure_role(client, MANAGED_ROLE))
            dsn = self._learning_dsn_for(subject) if self._learning_dsn_for else None
            if dsn:
                progress("superset: connecting the student's schema")
                database_id = self._ensure_database(client, own_name, dsn)
                own_role_id = self._ensure_own_role(client, own_name, database_id)
                role_ids.append(own_role_id)
                details.update(database=own_name, database_id=str(database_id))
            user_id = self._ensure_user(client, subject, password, role_ids)
        details.update(user_id=str(user_id), roles=",".join(self._managed_role_names(own_name)))
        logger.info("superset: provisioned user %s (id %s)", subject.username, user_id)
        return ToolAccount(
            tool=self.name,
            status=ToolStatus.READY,
            url=f"{self._base_url}/login/",
            username=subject.username,
            secret=password,
            details=details,
        )

    def status(self, subject: ToolSubject) -> ToolAccount:
        with self._session() as client:
            user = self._find_user(client, subject.username)
        if user is None:
            return ToolAccount(tool=self.name, status=ToolStatus.ABSENT)
        return ToolAccount(
            tool=self.name,
            status=ToolStatus.READY if user.get("active") else ToolStatus.DISABLED,
            url=f"{self._base_url}/login/",
            username=subject.username,
            details={"user_id": str(user["id"])},
        )

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        own_name = student_object_name(subject.username)
        with self._session() as client:
            user = self._find_user(client, subject.username)
            if user is not None:
                self._check_ours(user, own_name)
                path = f"{SECURITY}/users/{user['id']}"
                if drop:
                    request(client, self.name, "DELETE", path, ok=(200, 204, 404))
                else:
                    request(client, self.name, "PUT", path, json={"active": False})
            if drop:
                database = self._find_one(client, "/api/v1/database/", "database_name", own_name)
                if database is not None:
                    self._with_csrf(client)
                    request(
                        client,
                        self.name,
                        "DELETE",
                        f"/api/v1/database/{database['id']}",
                        ok=(200, 204, 404),
                    )
                role = self._find_one(client, f"{SECURITY}/roles/", "name", own_name)
                if role is not None:
                    request(
                        client,
                        self.name,
                        "DELETE",
                        f"{SECURITY}/roles/{role['id']}",
                        ok=(200, 204, 404),
                    )
        logger.info("superset: deprovisioned %s (drop=%s)", subject.username, drop)

    def holders(self) -> list[Held]:
        """Every user carrying `onramp_managed` (users without it are never ours)."""
        held = []
        with self._session() as client:
            page = 0
            while True:
                response = request(
                    client,
                    self.name,
                    "GET",
                    f"{SECURITY}/users/",
                    params={
                        "q": f"(order_column:id,order_direction:asc,page:{page},"
                        f"page_size:{PAGE_SIZE})"
                    },
                )
                users = json_of(self.name, response).get("result") or []
                for user in users:
                    roles = {role.get("name") for role in user.get("roles") or []}
                    if MANAGED_ROLE in roles and user.get("username"):
                        status = ToolStatus.READY if user.get("active") else ToolStatus.DISABLED
                        held.append(Held(str(user["username"]), status, str(user["username"])))
                if len(users) < PAGE_SIZE:
                    return sorted(held)
                page += 1

    # -- session --------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[httpx.Client]:
        """A client logged in as the admin (bearer token); one per operation."""
        with httpx.Client(base_url=self._base_url, timeout=self._timeout) as client:
            response = request(
                client,
                self.name,
                "POST",
                f"{SECURITY}/login",
                ok=(200, 401),
                json={
                    "username": self._admin_username,
                    "password": self._admin_password,
                    "provider": "db",
                    "refresh": False,
                },
            )
            if response.status_code == 401:
                raise ToolPermanentError("superset: the admin credentials were rejected (401)")
            token = json_of(self.name, response).get("access_token")
            if not token:
                raise ToolTransientError("superset: login answered without an access token")
            client.headers["Authorization"] = f"Bearer {token}"
            yield client

    def _with_csrf(self, client: httpx.Client) -> None:
        """The database API is CSRF-protected even with a bearer token."""
        if "X-CSRFToken" in client.headers:
            return
        response = request(client, self.name, "GET", f"{SECURITY}/csrf_token/")
        client.headers["X-CSRFToken"] = str(json_of(self.name, response)["result"])
        client.headers["Referer"] = self._base_url + "/"

    # -- look-ups -------------------------------------------------------------------------

    def _find_one(
        self, client: httpx.Client, path: str, column: str, value: str
    ) -> dict[str, Any] | None:
        response = request(client, self.name, "GET", path, params=_eq_filter(column, value))
        results = json_of(self.name, response).get("result") or []
        # `eq` is exact in FAB, but be strict: a case-insensitive backend must not match.
        for item in results:
            if item.get(column) == value:
                found: dict[str, Any] = item
                return found
        return None

    def _find_user(self, client: httpx.Client, username: str) -> dict[str, Any] | None:
        return self._find_one(client, f"{SECURITY}/users/", "username", username)

    def _role_id(self, client: httpx.Client, name: str) -> int | None:
        role = self._find_one(client, f"{SECURITY}/roles/", "name", name)
        return None if role is None else int(role["id"])

    def _managed_role_names(self, own_name: str) -> list[str]:
        names = [self._student_role, *self._extra_roles, MANAGED_ROLE]
        if self._learning_dsn_for is not None:
            names.append(own_name)
        return names

    def _check_ours(self, user: dict[str, Any], own_name: str) -> None:
        """Refuse (for support to resolve) a user we did not create, or one staff promoted."""
        roles = {role.get("name") for role in user.get("roles") or []}
        if MANAGED_ROLE not in roles:
            raise ToolPermanentError(
                f"superset: user {user.get('username')!r} exists but was not created by Onramp "
                f"(no {MANAGED_ROLE} role); rename or remove one of them, or give it that role"
            )
        allowed = {self._student_role, own_name, MANAGED_ROLE, *self._extra_roles}
        if not roles <= allowed:
            raise ToolPermanentError(
                f"superset: user {user.get('username')!r} has roles beyond a student's "
                f"({', '.join(sorted(str(r) for r in roles - allowed))}); left unchanged"
            )

    # -- find-or-create -------------------------------------------------------------------

    def _ensure_user(
        self, client: httpx.Client, subject: ToolSubject, password: str, role_ids: list[int]
    ) -> int:
        own_name = student_object_name(subject.username)
        user = self._find_user(client, subject.username)
        if user is None:
            first, _, last = subject.name.strip().partition(" ")
            response = request(
                client,
                self.name,
                "POST",
                f"{SECURITY}/users/",
                ok=(200, 201, 400, 409, 422, 500),
                json={
                    "active": True,
                    "username": subject.username,
                    "email": subject.email,
                    "first_name": first or subject.username,
                    "last_name": last or "-",
                    "password": password,
                    "roles": role_ids,
                },
            )
            if response.status_code in (200, 201):
                return int(json_of(self.name, response)["id"])
            # Someone else may have created it meanwhile; otherwise the error stands.
            user = self._find_user(client, subject.username)
            if user is None:
                error = ToolPermanentError if response.status_code < 500 else ToolTransientError
                raise error(f"superset: creating the user answered HTTP {response.status_code}")
        self._check_ours(user, own_name)
        request(
            client,
            self.name,
            "PUT",
            f"{SECURITY}/users/{user['id']}",
            json={"password": password, "active": True, "roles": role_ids},
        )
        return int(user["id"])

    def _ensure_database(self, client: httpx.Client, name: str, dsn: str) -> int:
        self._with_csrf(client)
        body = {"database_name": name, "sqlalchemy_uri": dsn, "expose_in_sqllab": True}
        database = self._find_one(client, "/api/v1/database/", "database_name", name)
        if database is None:
            response = request(
                client, self.name, "POST", "/api/v1/database/", ok=(200, 201, 422), json=body
            )
            if response.status_code != 422:
                return int(json_of(self.name, response)["id"])
            database = self._find_one(client, "/api/v1/database/", "database_name", name)
            if database is None:
                # 422 is also "connection failed": Superset could not reach the schema.
                raise ToolTransientError("superset: could not create the student's connection")
        # The DSN's password is fresh on every provision: keep the connection in step.
        request(
            client,
            self.name,
            "PUT",
            f"/api/v1/database/{database['id']}",
            json={"sqlalchemy_uri": dsn, "expose_in_sqllab": True},
        )
        return int(database["id"])

    def _ensure_role(self, client: httpx.Client, name: str) -> int:
        role = self._find_one(client, f"{SECURITY}/roles/", "name", name)
        if role is not None:
            return int(role["id"])
        response = request(
            client,
            self.name,
            "POST",
            f"{SECURITY}/roles/",
            ok=(200, 201, 400, 422, 500),
            json={"name": name},
        )
        if response.status_code in (200, 201):
            return int(json_of(self.name, response)["id"])
        # Created concurrently (Superset answers a duplicate with a 500)?
        role = self._find_one(client, f"{SECURITY}/roles/", "name", name)
        if role is None:
            raise ToolTransientError(
                f"superset: creating role {name} answered HTTP {response.status_code}"
            )
        return int(role["id"])

    def _ensure_own_role(self, client: httpx.Client, name: str, database_id: int) -> int:
        role_id = self._ensure_role(client, name)
        permission_view_id = self._database_access_id(client, name, database_id)
        # This replaces the role's permission set: it only ever holds this one.
        request(
            client,
            self.name,
            "POST",
            f"{SECURITY}/roles/{role_id}/permissions",
            json={"permission_view_menu_ids": [permission_view_id]},
        )
        return role_id

    def _database_access_id(self, client: httpx.Client, name: str, database_id: int) -> int:
        resource = self._find_one(
            client, f"{SECURITY}/resources/", "name", f"[{name}].(id:{database_id})"
        )
        permission = self._find_one(client, f"{SECURITY}/permissions/", "name", DATABASE_ACCESS)
        if resource is None or permission is None:
            # Superset writes the permission right after the connection; a retry finds it.
            raise ToolTransientError(f"superset: no {DATABASE_ACCESS} permission for {name} yet")
        response = request(
            client,
            self.name,
            "GET",
            f"{SECURITY}/permissions-resources/",
            params={
                "q": f"(filters:!((col:permission,opr:rel_o_m,value:{int(permission['id'])}),"
                f"(col:view_menu,opr:rel_o_m,value:{int(resource['id'])})))"
            },
        )
        ids = json_of(self.name, response).get("ids") or []
        if not ids:
            raise ToolTransientError(f"superset: no {DATABASE_ACCESS} permission for {name} yet")
        return int(ids[0])
