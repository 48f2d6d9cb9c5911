"""`make dev`'s real tool servers (devstack/tools.py): which servers it plans from the
settings, and that the embedded learning PostgreSQL really runs and asks for passwords."""

import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from core.settings import Settings
from devstack.tools import plan_tools
from tests.utils.helpers import create_database, drop_database, free_port, sqlalchemy_url

CONFIGURED = {
    "prefect_api_url": "http://127.0.0.1:1/api",
    "superset_url": "http://127.0.0.1:2",
    "docker_host": "unix:///nonexistent.sock",
}


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, app_env="development", **values)  # type: ignore[arg-type]


def test_no_real_tools_when_turned_off(tmp_path: Path) -> None:
    tools = plan_tools(settings(dev_real_tools=False), tmp_path)
    assert tools.servers == [] and tools.env == {}


def test_configured_tools_are_left_to_their_settings(tmp_path: Path) -> None:
    tools = plan_tools(
        settings(learning_database_url="postgresql://x@127.0.0.1:1/x", **CONFIGURED), tmp_path
    )
    assert tools.servers == [] and tools.env == {}
    assert any("SUPERSET_URL" in line for line in tools.lines)


def test_superset_is_off_unless_asked(tmp_path: Path) -> None:
    tools = plan_tools(
        settings(
            learning_database_url="postgresql://x@127.0.0.1:1/x",
            prefect_api_url="x",
            docker_host="unix:///nonexistent.sock",
        ),
        tmp_path,
    )
    assert "SUPERSET_URL" not in tools.env
    assert any(line.startswith("Superset: off") for line in tools.lines)


def test_on_postgresql_the_schemas_go_to_a_database_of_their_own(tmp_path: Path) -> None:
    name = create_database()
    try:
        tools = plan_tools(settings(database_url=sqlalchemy_url(name), **CONFIGURED), tmp_path)
        dsn = tools.env["LEARNING_DATABASE_URL"]
        assert dsn.endswith(f"/{name}_learning") and tools.servers == []
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (f"{name}_learning",)
        # A second start finds it.
        again = plan_tools(settings(database_url=sqlalchemy_url(name), **CONFIGURED), tmp_path)
        assert again.env["LEARNING_DATABASE_URL"] == dsn
    finally:
        drop_database(f"{name}_learning")
        drop_database(name)


def test_on_sqlite_an_embedded_postgresql_runs_and_wants_passwords(tmp_path: Path) -> None:
    port = free_port()
    plan = plan_tools(
        settings(database_url="sqlite:///x.db", dev_learning_postgres_port=port, **CONFIGURED),
        tmp_path,
    )
    [server] = plan.servers
    assert server.name == "learning-postgres" and server.user is not None
    process = subprocess.Popen(server.argv, user=server.user, cwd=tmp_path)
    try:
        dsn = plan.env["LEARNING_DATABASE_URL"]
        for _ in range(100):
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    version = conn.execute("SHOW server_version").fetchone()
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        else:
            pytest.fail("the embedded PostgreSQL did not accept its superuser's password")
        assert version is not None and version[0].startswith("18")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(dsn.replace(dsn.split(":")[2].split("@")[0], "wrong"))
        # The next start reuses the data and its password.
        assert (
            plan_tools(
                settings(
                    database_url="sqlite:///x.db", dev_learning_postgres_port=port, **CONFIGURED
                ),
                tmp_path,
            ).env["LEARNING_DATABASE_URL"]
            == dsn
        )
    finally:
        process.terminate()
        process.wait(20)


def test_without_a_docker_host_workspaces_are_processes(tmp_path: Path) -> None:
    values = {**CONFIGURED, "docker_host": ""}
    tools = plan_tools(
        settings(learning_database_url="postgresql://x@127.0.0.1:1/x", **values), tmp_path
    )
    assert tools.env["WORKSPACE_BACKEND"] == "process"
    assert tools.env["WORKSPACE_ROOT"] == str(tmp_path / "workspaces")
