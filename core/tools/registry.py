"""Chooses each tool's adapter from settings: the real one when its server is configured.

A tool without a configured server gets its development stand-in; `development_tools`
lists those so production can refuse to start with any. `ONRAMP_TOOL_FAULTS` wraps
adapters in fault injection for tests (ignored, with a warning, in production).
Workspaces (Jupyter, code-server) follow WORKSPACE_BACKEND: containers through DOCKER_HOST
(production), or one local server process per student (`process`, for make dev).
"""

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.settings import Settings, configured_tools
from core.tools.base import ToolAdapter
from core.tools.development import DevelopmentToolAdapter
from core.tools.faults import FAULTS_ENV, FaultInjectingAdapter, parse_fault_plans
from core.tracks import (
    TOOL_CODESERVER,
    TOOL_JUPYTER,
    TOOL_POSTGRES,
    TOOL_PREFECT,
    TOOL_SUPERSET,
)

if TYPE_CHECKING:
    import docker


logger = logging.getLogger(__name__)


def docker_client_factory(base_url: str) -> Callable[[], "docker.DockerClient"]:
    """One shared client per engine, created on first use (never at import or startup)."""
    lock = threading.Lock()
    clients: list[docker.DockerClient] = []

    def factory() -> "docker.DockerClient":
        import docker

        with lock:
            if not clients:
                clients.append(docker.DockerClient(base_url=base_url, timeout=60))
            return clients[0]

    return factory


def build_adapters(settings: Settings) -> dict[str, ToolAdapter]:
    """One adapter per tool in `ALL_TOOLS`; constructs clients lazily, does no I/O."""
    configured = configured_tools(settings)
    adapters: dict[str, ToolAdapter] = {}

    def stand_in(tool: str) -> DevelopmentToolAdapter:
        return DevelopmentToolAdapter(
            tool, latency_ms=settings.tool_dev_latency_ms, base_url=settings.public_base_url
        )

    postgres = None
    if configured[TOOL_POSTGRES]:
        from core.tools.postgres_schema import PostgresSchemaAdapter

        postgres = PostgresSchemaAdapter(
            settings.learning_database_url,
            connection_limit=settings.student_connection_limit,
            statement_timeout_ms=settings.student_statement_timeout_ms,
        )
        adapters[TOOL_POSTGRES] = postgres
    else:
        adapters[TOOL_POSTGRES] = stand_in(TOOL_POSTGRES)

    if configured[TOOL_SUPERSET]:
        from core.tools.superset import SupersetAdapter

        adapters[TOOL_SUPERSET] = SupersetAdapter(
            settings.superset_url,
            settings.superset_admin_username,
            settings.superset_admin_password,
            student_role=settings.superset_student_role,
            # The connection to the student's schema needs a real learning database.
            learning_dsn_for=postgres.superset_dsn if postgres is not None else None,
        )
    else:
        adapters[TOOL_SUPERSET] = stand_in(TOOL_SUPERSET)

    if configured[TOOL_PREFECT]:
        from core.tools.prefect import PrefectAdapter

        adapters[TOOL_PREFECT] = PrefectAdapter(
            settings.prefect_api_url, auth_string=settings.prefect_api_auth_string or None
        )
    else:
        adapters[TOOL_PREFECT] = stand_in(TOOL_PREFECT)

    if settings.workspace_backend == "process":
        from core.tools.process_workspace import ProcessWorkspaceAdapter, default_binary

        binaries = {TOOL_JUPYTER: settings.jupyter_bin, TOOL_CODESERVER: settings.codeserver_bin}
        for tool, binary in binaries.items():
            adapters[tool] = ProcessWorkspaceAdapter(
                tool,
                binary or default_binary(tool),
                settings.workspace_root,
                host=settings.workspace_host,
                ports=(settings.workspace_port_min, settings.workspace_port_max),
                idle_timeout_s=settings.workspace_idle_timeout_minutes * 60,
                health_timeout_s=settings.workspace_health_timeout_s,
            )
    elif settings.docker_host:
        from core.tools.workspace import DockerWorkspaceAdapter

        factory = docker_client_factory(settings.docker_host)
        images = {TOOL_JUPYTER: settings.jupyter_image, TOOL_CODESERVER: settings.codeserver_image}
        for tool, image in images.items():
            adapters[tool] = DockerWorkspaceAdapter(
                tool,
                factory,
                image,
                settings.workspace_host,
                memory=settings.workspace_memory,
                cpus=settings.workspace_cpus,
                pids_limit=settings.workspace_pids_limit,
                network=settings.workspace_network,
                health_timeout_s=settings.workspace_health_timeout_s,
            )
    else:
        adapters[TOOL_JUPYTER] = stand_in(TOOL_JUPYTER)
        adapters[TOOL_CODESERVER] = stand_in(TOOL_CODESERVER)

    return _with_faults(settings, adapters)


def _with_faults(settings: Settings, adapters: dict[str, ToolAdapter]) -> dict[str, ToolAdapter]:
    raw = os.environ.get(FAULTS_ENV, "").strip()
    if not raw:
        return adapters
    if settings.app_env == "production":
        logger.warning("%s is set but ignored in production", FAULTS_ENV)
        return adapters
    plans = parse_fault_plans(raw)
    unknown = set(plans) - set(adapters)
    if unknown:
        raise ValueError(f"{FAULTS_ENV} names unknown tools: {', '.join(sorted(unknown))}")
    for tool, plan in plans.items():
        adapters[tool] = FaultInjectingAdapter(adapters[tool], plan)
        logger.warning("tool %s: fault injection on (%s)", tool, plan)
    return adapters
