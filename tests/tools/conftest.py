"""Fixtures for the tool adapter tests: a throwaway learning database and real tool servers.

Superset, Prefect and JupyterLab run from their own cached virtualenvs, code-server from a
cached npm install (created on first use by scripts/tools/ensure-*.sh, which makes a first
run slow); Podman serves the Docker API.
Each server is started once per session on a free loopback port and stopped afterwards.
Select or skip them with the markers registered below (e.g. `-m "not superset"`); one
that cannot be installed or started skips its tests, or fails them under CI=true.
"""

import itertools
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from core.tools.base import ToolSubject
from tests.utils.helpers import require

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "tools"))

import tool_servers  # noqa: E402

T = TypeVar("T")

ADMIN_DSN = os.environ.get("ONRAMP_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432")

MARKERS = {
    "postgres": "needs the PostgreSQL server on 127.0.0.1:5432",
    "superset": "starts a real Superset server (its venv is installed on first use)",
    "prefect": "starts a real Prefect server (its venv is installed on first use)",
    "podman": "needs Podman's Docker API (installed and started by ensure-podman.sh)",
    "workspace_process": (
        "starts real JupyterLab and code-server processes (installed on first use by"
        " ensure-jupyter.sh and ensure-codeserver.sh)"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


# One suffix per session: roles are cluster-wide and Superset users outlive a database.
RUN_ID = secrets.token_hex(3)
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def run_id() -> str:
    """This session's suffix; every username starts with `t<run_id>_`."""
    return RUN_ID


@pytest.fixture
def make_subject() -> Callable[..., ToolSubject]:
    """Fresh, unique students: `make_subject()` or `make_subject("alice")`."""

    def make(label: str = "s") -> ToolSubject:
        n = next(_counter)
        username = f"t{RUN_ID}_{label}{n}"
        return ToolSubject(
            user_id=n,
            username=username,
            email=f"{username}@students.onramp.test",
            name=f"Test Student{n}",
            enrollment_id=f"cs_test_{RUN_ID}_{n}",
        )

    return make


@pytest.fixture(scope="session")
def learning_db() -> Iterator[str]:
    """A throwaway learning database; dropped with every role the session created."""
    name = f"onramp_tools_test_{RUN_ID}"
    with psycopg.connect(f"{ADMIN_DSN}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{ADMIN_DSN}/{name}"
    finally:
        with psycopg.connect(f"{ADMIN_DSN}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY length(rolname) DESC",
                (f"student\\_t{RUN_ID}\\_%",),
            ).fetchall()
            for (role,) in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def available(start: Callable[[], T], what: str) -> T:
    """Start a real tool; one its ensure-*.sh script cannot install or start is missing."""
    try:
        return start()
    except tool_servers.ToolUnavailable as err:
        require(False, what, f"`make tools-deps` installs and starts it; {err}")
        raise  # not reached: require skips or fails


@pytest.fixture(scope="session")
def superset_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tool_servers.RunningServer]:
    workdir = tmp_path_factory.mktemp("superset")
    server = available(lambda: tool_servers.start_superset(workdir), "Superset")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tool_servers.RunningServer]:
    workdir = tmp_path_factory.mktemp("prefect")
    server = available(lambda: tool_servers.start_prefect(workdir), "the Prefect server")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def docker_url() -> str:
    return available(tool_servers.ensure_podman, "Podman's Docker API (a container that starts)")


@pytest.fixture(scope="session")
def test_image(docker_url: str) -> str:
    return tool_servers.ensure_test_image()
