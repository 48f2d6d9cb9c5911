"""Browser workspaces (Jupyter, code-server): one container per student and tool via the docker SDK.

Works against Docker or Podman's Docker API. Everything that differs between the real
images and a test image is configuration (`WorkspaceSpec`: command template, internal
port, health path, the env var carrying the token, where the volume goes), so the tests
exercise this very code with a tiny local image.

A container is found by its deterministic name `onramp-<tool>-<username>`. A create that
fails is followed by a second look-up, so a name conflict is success whatever the engine
answers (Docker 409, Podman 500). The token lives in the container's environment, so a
re-provision returns the same secret; the host port is chosen once and kept in the port
binding, so the URL survives restarts. Work survives restarts and re-creations in the
named volume `onramp-<tool>-<username>`.
"""

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.utils
import httpx
import requests.exceptions
from docker.models.containers import Container

from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolError,
    ToolPermanentError,
    ToolStatus,
    ToolSubject,
    ToolTransientError,
    no_progress,
)
from core.tracks import TOOL_CODESERVER, TOOL_JUPYTER

logger = logging.getLogger(__name__)

HOST_NETWORK = "host"


@dataclass(frozen=True)
class WorkspaceSpec:
    """How to run and probe one kind of workspace image.

    `command` items are templates: `{port}` is the port the server must listen on inside
    the container, `{username}` the student's username. `None` keeps the image's command.
    """

    internal_port: int
    health_path: str
    token_env: str
    volume_path: str
    command: tuple[str, ...] | None = None
    url_path: str = "/"
    cap_add: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()


# Jupyter reads JUPYTER_TOKEN itself; /api answers without a token once the server is up.
JUPYTER_SPEC = WorkspaceSpec(
    internal_port=8888,
    health_path="/api",
    token_env="JUPYTER_TOKEN",
    volume_path="/home/jovyan/work",
    command=("start-notebook.py", "--ServerApp.ip=0.0.0.0", "--ServerApp.port={port}"),
    url_path="/lab",
)
# code-server reads PASSWORD for --auth password; /healthz needs no login.
CODESERVER_SPEC = WorkspaceSpec(
    internal_port=8080,
    health_path="/healthz",
    token_env="PASSWORD",
    volume_path="/home/coder",
    command=("--bind-addr", "0.0.0.0:{port}", "--auth", "password", "/home/coder"),
)
DEFAULT_SPECS = {TOOL_JUPYTER: JUPYTER_SPEC, TOOL_CODESERVER: CODESERVER_SPEC}


def workspace_name(tool: str, username: str) -> str:
    """Container and volume name; usernames are [a-z0-9_], valid in both."""
    return f"onramp-{tool}-{username}"


def classify(exc: Exception, what: str) -> ToolError:
    """Engine failures: unreachable or 5xx is transient, a refused request permanent."""
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        error: type[ToolError] = ToolTransientError if status >= 500 else ToolPermanentError
        return error(f"workspace: {what} failed: engine answered HTTP {status}")
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException):
        return ToolTransientError(f"workspace: {what} failed: cannot reach the container engine")
    return ToolPermanentError(f"workspace: {what} failed: {type(exc).__name__}")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class DockerWorkspaceAdapter:
    """One container per student for `tool` (jupyter or codeserver)."""

    development = False

    def __init__(
        self,
        tool: str,
        docker_client_factory: Callable[[], docker.DockerClient],
        image: str,
        host: str = "127.0.0.1",
        *,
        spec: WorkspaceSpec | None = None,
        memory: str = "1g",
        cpus: float = 1.0,
        pids_limit: int = 256,
        network: str = "",
        health_timeout_s: float = 120.0,
        probe_interval_s: float = 0.5,
        stop_timeout_s: int = 10,
        public_host: str | None = None,
    ) -> None:
        if spec is None:
            if tool not in DEFAULT_SPECS:
                raise ToolPermanentError(f"workspace: no default spec for tool {tool!r}")
            spec = DEFAULT_SPECS[tool]
        if network == HOST_NETWORK and spec.command is None:
            raise ToolPermanentError("workspace: host networking needs a command with {port}")
        self.name = tool
        self._factory = docker_client_factory
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._image = image
        self._host = host
        self._spec = spec
        self._memory = memory
        self._nano_cpus = int(cpus * 1_000_000_000)
        self._pids_limit = pids_limit
        self._network = network
        self._health_timeout_s = health_timeout_s
        self._probe_interval_s = probe_interval_s
        self._stop_timeout_s = stop_timeout_s
        bind_all = host in ("0.0.0.0", "")
        self._public_host = public_host or ("127.0.0.1" if bind_all else host)
        self._probe_host = "127.0.0.1" if bind_all else host

    # -- the ToolAdapter interface ------------------------------------------------------

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        name = workspace_name(self.name, subject.username)
        client = self._docker()
        container = self._find(client, name)
        if container is None:
            container = self._create(client, subject, name, progress)
        self._check_ours(container, subject)
        if container.status != "running":
            progress(f"{self.name}: starting {name}")
            self._call("start container", container.start)
        port = self._host_port(container)
        self._wait_healthy(container, port, progress)
        logger.info("workspace: %s ready on port %s", name, port)
        return self._account(subject, container, ToolStatus.READY, port, with_secret=True)

    def status(self, subject: ToolSubject) -> ToolAccount:
        container = self._find(self._docker(), workspace_name(self.name, subject.username))
        if container is None:
            return ToolAccount(tool=self.name, status=ToolStatus.ABSENT)
        self._check_ours(container, subject)
        state: ToolStatus = (
            ToolStatus.READY if container.status == "running" else ToolStatus.DISABLED
        )
        return self._account(subject, container, state, self._host_port(container), False)

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        name = workspace_name(self.name, subject.username)
        client = self._docker()
        container = self._find(client, name)
        if container is not None:
            self._check_ours(container, subject)
            try:
                if drop:
                    container.remove(force=True)
                elif container.status == "running":
                    container.stop(timeout=self._stop_timeout_s)
            except docker.errors.NotFound:
                pass  # removed concurrently: the goal is reached
            except Exception as exc:
                raise classify(exc, "stopping the container") from exc
        if drop:
            try:
                client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                raise classify(exc, "removing the volume") from exc
        logger.info("workspace: %s %s", name, "removed" if drop else "stopped")

    def holders(self) -> list[Held]:
        """Containers labelled with this tool whose name is the student's workspace name."""
        containers = self._call(
            "listing containers",
            self._docker().containers.list,
            all=True,
            filters={"label": [f"onramp.tool={self.name}"]},
        )
        held = []
        for container in containers:
            username = (container.labels or {}).get("onramp.student", "")
            if username and container.name == workspace_name(self.name, username):
                status = ToolStatus.READY if container.status == "running" else ToolStatus.DISABLED
                held.append(Held(username, status, container.name))
        return sorted(held)

    # -- engine calls ---------------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._factory()
                except Exception as exc:
                    raise classify(exc, "connecting to the container engine") from exc
            return self._client

    @staticmethod
    def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise classify(exc, what) from exc

    def _find(self, client: docker.DockerClient, name: str) -> Container | None:
        try:
            container: Container = client.containers.get(name)
            return container
        except docker.errors.NotFound:
            return None
        except Exception as exc:
            raise classify(exc, "looking up the container") from exc

    def _ensure_image(self, client: docker.DockerClient, progress: Progress) -> None:
        try:
            client.images.get(self._image)
            return
        except docker.errors.ImageNotFound:
            pass
        except Exception as exc:
            raise classify(exc, "looking up the image") from exc
        progress(f"{self.name}: pulling {self._image}")
        # Engines report a failed pull inside the stream (Podman answers 200, then the image
        # is missing), and "unreachable registry" and "no such image" look alike: retry both
        # until the tool's retry budget is spent, then support sees the message.
        failed = ToolTransientError(
            f"workspace: pulling {self._image} failed (registry unreachable or no such image)"
        )
        try:
            repository, tag = docker.utils.parse_repository_tag(self._image)
            last_beat = time.monotonic()
            for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    raise failed
                if time.monotonic() - last_beat > 5:
                    # A large image takes minutes: keep the activity's heartbeat going.
                    progress(f"{self.name}: still pulling {self._image}")
                    last_beat = time.monotonic()
            client.images.get(self._image)
        except ToolTransientError:
            raise
        except Exception as exc:
            raise failed from exc

    def _ensure_volume(
        self, client: docker.DockerClient, name: str, labels: dict[str, str]
    ) -> None:
        try:
            client.volumes.get(name)
            return
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            raise classify(exc, "looking up the volume") from exc
        try:
            client.volumes.create(name=name, labels=labels)
        except Exception as exc:
            # Created concurrently by another provision: fine if it is there now.
            try:
                client.volumes.get(name)
            except Exception:
                raise classify(exc, "creating the volume") from exc

    def _create(
        self, client: docker.DockerClient, subject: ToolSubject, name: str, progress: Progress
    ) -> Container:
        self._ensure_image(client, progress)
        labels = {
            "onramp.student": subject.username,
            "onramp.tool": self.name,
            "onramp.enrollment": subject.enrollment_id,
            "onramp.user_id": str(subject.user_id),
        }
        self._ensure_volume(client, name, labels)
        host_port = _free_port(self._probe_host)
        host_network = self._network == HOST_NETWORK
        listen_port = host_port if host_network else self._spec.internal_port
        command = (
            [
                part.format(port=listen_port, username=subject.username)
                for part in self._spec.command
            ]
            if self._spec.command is not None
            else None
        )
        environment = dict(self._spec.environment)
        environment[self._spec.token_env] = secrets.token_urlsafe(24)
        options: dict[str, Any] = {
            "name": name,
            "command": command,
            "detach": True,
            "labels": {**labels, "onramp.port": str(host_port)},
            "environment": environment,
            "volumes": {name: {"bind": self._spec.volume_path, "mode": "rw"}},
            "mem_limit": self._memory,
            "nano_cpus": self._nano_cpus,
            "pids_limit": self._pids_limit,
            "privileged": False,
            "cap_drop": ["ALL"],
            "cap_add": list(self._spec.cap_add) or None,
            "security_opt": ["no-new-privileges"],
            "restart_policy": {"Name": "unless-stopped"},
        }
        if host_network:
            options["network_mode"] = HOST_NETWORK
        else:
            options["ports"] = {f"{self._spec.internal_port}/tcp": (self._host, host_port)}
            if self._network:
                options["network"] = self._network
        progress(f"{self.name}: creating {name}")
        try:
            container: Container = client.containers.create(self._image, **options)
            logger.info("workspace: created %s", name)
            return container
        except Exception as exc:
            # A name conflict (Docker 409, Podman 500): someone created it meanwhile.
            existing = self._find(client, name)
            if existing is None:
                raise classify(exc, "creating the container") from exc
            logger.info("workspace: %s was created concurrently; using it", name)
            return existing

    # -- inspection -----------------------------------------------------------------------

    def _check_ours(self, container: Container, subject: ToolSubject) -> None:
        labels = container.labels or {}
        if labels.get("onramp.tool") != self.name or labels.get("onramp.student") != (
            subject.username
        ):
            raise ToolPermanentError(
                f"workspace: container {container.name} exists but is not this student's"
            )

    def _host_port(self, container: Container) -> int:
        if self._network != HOST_NETWORK:
            bindings = (container.attrs.get("HostConfig") or {}).get("PortBindings") or {}
            for binding in bindings.get(f"{self._spec.internal_port}/tcp") or []:
                if binding.get("HostPort"):
                    return int(binding["HostPort"])
        port = (container.labels or {}).get("onramp.port", "")
        if not port.isdigit():
            raise ToolPermanentError(f"workspace: {container.name} has no published port")
        return int(port)

    def _token(self, container: Container) -> str | None:
        prefix = self._spec.token_env + "="
        for item in (container.attrs.get("Config") or {}).get("Env") or []:
            if item.startswith(prefix):
                return str(item[len(prefix) :])
        return None

    def _wait_healthy(self, container: Container, port: int, progress: Progress) -> None:
        """Probe the server until it answers; heartbeat through `progress` in between."""
        url = f"http://{self._probe_host}:{port}{self._spec.health_path}"
        started = time.monotonic()
        deadline = started + self._health_timeout_s
        self._call("inspecting the container", container.reload)
        # The restart policy hides a crash loop behind "running": count restarts instead.
        restarts = int(container.attrs.get("RestartCount") or 0)
        with httpx.Client(timeout=2.0, follow_redirects=False) as http:
            while True:
                try:
                    if http.get(url).status_code < 500:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                self._call("inspecting the container", container.reload)
                crashed = int(container.attrs.get("RestartCount") or 0) > restarts
                if crashed or container.status in ("exited", "dead", "stopped"):
                    code = (container.attrs.get("State") or {}).get("ExitCode")
                    raise ToolPermanentError(
                        f"workspace: {container.name} exited (code {code}) while starting"
                    )
                if time.monotonic() >= deadline:
                    waited = self._health_timeout_s
                    raise ToolTransientError(
                        f"workspace: {container.name} not healthy after {waited:.0f}s"
                    )
                progress(
                    f"{self.name}: waiting for {container.name} ({time.monotonic() - started:.0f}s)"
                )
                time.sleep(self._probe_interval_s)

    def _account(
        self,
        subject: ToolSubject,
        container: Container,
        status: ToolStatus,
        port: int,
        with_secret: bool,
    ) -> ToolAccount:
        return ToolAccount(
            tool=self.name,
            status=status,
            url=f"http://{self._public_host}:{port}{self._spec.url_path}",
            username=subject.username,
            secret=self._token(container) if with_secret else None,
            details={
                "container": container.name or "",
                "container_id": container.id or "",
                "volume": workspace_name(self.name, subject.username),
                "image": self._image,
            },
        )
