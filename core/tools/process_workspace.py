"""Browser workspaces (Jupyter, code-server) as one local process per student, for `make dev`.

The JupyterHub LocalProcessSpawner pattern without the hub: each student gets their own
server process on its own loopback port, with its own secret (Jupyter's token, code-server's
password) and its own folder `<root>/<username>/<tool>/`:

    state.json   port, secret, pid and what the workspace should be doing (mode 0600)
    server.log   the server's output
    home/        HOME and the tool's config, data and runtime directories
    work/        what the student works in (Jupyter's root_dir, code-server's folder)

State lives on disk, not in the worker: a restarted worker (or a second one) reads
state.json and finds the servers still running, because they run in their own session and
outlive the worker. A recorded pid counts only while /proc shows the same process start
time, so a reused pid is never mistaken for (or signalled as) a workspace. Every change to a
workspace happens under its lock file in `<root>/.locks/`; ports are handed out under one
more lock, so concurrent provisions in any number of workers agree.

Supervision: a workspace that should be running but whose process is gone (it crashed, or
the machine rebooted) is started again by the next provision or status, on the same port
when it is still free, with the same secret. Culling: a thread per adapter stops servers
idle for `idle_timeout_s` (Jupyter: `last_activity` of /api/status, which counts API and
kernel activity but not the status calls themselves; code-server: `lastHeartbeat` of
/healthz, written at most once a minute while in use). A culled workspace keeps its port,
secret and files, and the next provision or status starts it again, so for the student it
was never gone: status is the wake-up call a dashboard makes before showing the link. Only
deprovision makes status answer "disabled"; drop=True also deletes the folder.

The servers run as the worker's user with an environment built from scratch (never the
worker's, which holds the application's secrets), but with no other isolation: students
could read each other's files. `Settings.check_production` refuses this backend.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

import httpx

from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolPermanentError,
    ToolStatus,
    ToolSubject,
    ToolTransientError,
    no_progress,
)
from core.tracks import TOOL_CODESERVER, TOOL_JUPYTER

logger = logging.getLogger(__name__)

CODESERVER_VERSION = "4.96.4"
# Where scripts/tools/ensure-*.sh install the servers, below ${ONRAMP_TOOLS_CACHE}.
CACHED_BINARIES = {
    TOOL_JUPYTER: "jupyter-venv/bin/jupyter",
    TOOL_CODESERVER: f"codeserver-{CODESERVER_VERSION}/node_modules/.bin/code-server",
}
ENSURE_SCRIPTS = {
    TOOL_JUPYTER: "scripts/tools/ensure-jupyter.sh",
    TOOL_CODESERVER: "scripts/tools/ensure-codeserver.sh",
}
USERNAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
STATE_FILE = "state.json"
LOG_FILE = "server.log"
LOCKS_DIR = ".locks"
# Variables a server may inherit from the worker; everything else is left behind.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")

Mode = Literal["running", "stopped", "culled"]


def default_binary(tool: str) -> str:
    """The binary the ensure script installs, under ${ONRAMP_TOOLS_CACHE:-~/.cache/onramp}."""
    cache = os.environ.get("ONRAMP_TOOLS_CACHE") or str(Path.home() / ".cache" / "onramp")
    return str(Path(cache) / CACHED_BINARIES[tool])


@dataclass(frozen=True)
class WorkspaceDirs:
    base: Path  # <root>/<username>/<tool>

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def state(self) -> Path:
        return self.base / STATE_FILE

    @property
    def log(self) -> Path:
        return self.base / LOG_FILE


@dataclass(frozen=True)
class WorkspaceState:
    """What state.json holds; `mode` is what the workspace should be doing."""

    tool: str
    username: str
    user_id: int
    enrollment_id: str
    port: int
    secret: str
    mode: Mode = "stopped"
    pid: int = 0
    pid_start: str = ""  # the process's start time in /proc/<pid>/stat
    started_at: float = 0.0
    starts: int = 0


class ServerKind(Protocol):
    """How to run and probe one kind of server."""

    url_path: str

    def prepare(self, dirs: WorkspaceDirs) -> None: ...

    def command(self, binary: str, host: str, port: int, dirs: WorkspaceDirs) -> list[str]: ...

    def environment(self, dirs: WorkspaceDirs, secret: str) -> dict[str, str]: ...

    def ready(self, http: httpx.Client, base_url: str, secret: str) -> bool: ...

    def last_activity(self, http: httpx.Client, base_url: str, secret: str) -> float | None: ...


class JupyterServer:
    """JupyterLab; the token comes from JUPYTER_TOKEN, so it is not visible in `ps`."""

    url_path = "/lab"

    def prepare(self, dirs: WorkspaceDirs) -> None:
        return None

    def command(self, binary: str, host: str, port: int, dirs: WorkspaceDirs) -> list[str]:
        command = [
            binary,
            "lab",
            "--no-browser",
            f"--ServerApp.ip={host}",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",  # exit rather than move to a port nobody knows
            f"--ServerApp.root_dir={dirs.work}",
            # The venv is shared by every student: no installing extensions into it.
            "--LabApp.extension_manager=readonly",
        ]
        if os.geteuid() == 0:
            command.append("--ServerApp.allow_root=True")
        return command

    def environment(self, dirs: WorkspaceDirs, secret: str) -> dict[str, str]:
        return {
            "JUPYTER_TOKEN": secret,
            "JUPYTER_CONFIG_DIR": str(dirs.home / ".jupyter"),
            "JUPYTER_DATA_DIR": str(dirs.home / ".local" / "share" / "jupyter"),
            "JUPYTER_RUNTIME_DIR": str(dirs.home / ".local" / "share" / "jupyter" / "runtime"),
            "IPYTHONDIR": str(dirs.home / ".ipython"),
        }

    def ready(self, http: httpx.Client, base_url: str, secret: str) -> bool:
        # With the token: proves the server on this port is this student's.
        return _status(http, base_url, secret).status_code == 200

    def last_activity(self, http: httpx.Client, base_url: str, secret: str) -> float | None:
        response = _status(http, base_url, secret)
        if response.status_code != 200:
            return None
        value = response.json().get("last_activity")
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _status(http: httpx.Client, base_url: str, secret: str) -> httpx.Response:
    return http.get(f"{base_url}/api/status", headers={"Authorization": f"token {secret}"})


class CodeServer:
    """code-server with password auth; the password comes from PASSWORD."""

    url_path = "/"

    def prepare(self, dirs: WorkspaceDirs) -> None:
        config = dirs.home / ".config" / "code-server" / "config.yaml"
        if not config.exists():
            # Otherwise code-server writes one holding a random password of its own.
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text("auth: password\n")

    def command(self, binary: str, host: str, port: int, dirs: WorkspaceDirs) -> list[str]:
        return [
            binary,
            "--bind-addr",
            f"{host}:{port}",
            "--auth",
            "password",
            "--config",
            str(dirs.home / ".config" / "code-server" / "config.yaml"),
            "--user-data-dir",
            str(dirs.home / ".local" / "share" / "code-server" / "user-data"),
            "--extensions-dir",
            str(dirs.home / ".local" / "share" / "code-server" / "extensions"),
            "--disable-telemetry",
            "--disable-update-check",
            str(dirs.work),
        ]

    def environment(self, dirs: WorkspaceDirs, secret: str) -> dict[str, str]:
        return {
            "PASSWORD": secret,
            # The heartbeat file and logs go to $XDG_DATA_HOME/code-server.
            "XDG_DATA_HOME": str(dirs.home / ".local" / "share"),
            "XDG_CONFIG_HOME": str(dirs.home / ".config"),
            "XDG_CACHE_HOME": str(dirs.home / ".cache"),
        }

    def ready(self, http: httpx.Client, base_url: str, secret: str) -> bool:
        return http.get(f"{base_url}/healthz").status_code == 200

    def last_activity(self, http: httpx.Client, base_url: str, secret: str) -> float | None:
        # /healthz itself does not count as activity; 0 means no request since the start.
        response = http.get(f"{base_url}/healthz")
        if response.status_code != 200:
            return None
        beat = response.json().get("lastHeartbeat") or 0
        return beat / 1000 if beat else None


DEFAULT_KINDS: dict[str, ServerKind] = {
    TOOL_JUPYTER: JupyterServer(),
    TOOL_CODESERVER: CodeServer(),
}


def process_start(pid: int) -> str | None:
    """The start time of a live process (to tell it from a reused pid); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        # No /proc (not Linux): only whether the pid exists.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return fields[19]


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens there; a port in TIME_WAIT counts as free, as servers reuse it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _write_state(path: Path, state: WorkspaceState) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(state), out, indent=2)
    os.replace(tmp, path)


def _read_state(path: Path) -> WorkspaceState | None:
    try:
        data = json.loads(path.read_text())
        return WorkspaceState(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ToolPermanentError(f"process workspace: {path} is unreadable") from exc


class ProcessWorkspaceAdapter:
    """One local server process per student for `tool` (jupyter or codeserver)."""

    development = False

    def __init__(
        self,
        tool: str,
        binary: str,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        ports: tuple[int, int] = (20000, 20999),
        idle_timeout_s: float = 3600.0,
        cull_interval_s: float | None = None,
        health_timeout_s: float = 120.0,
        probe_interval_s: float = 0.25,
        stop_timeout_s: float = 10.0,
        public_host: str | None = None,
        kind: ServerKind | None = None,
    ) -> None:
        if kind is None:
            if tool not in DEFAULT_KINDS:
                raise ToolPermanentError(f"process workspace: no server kind for tool {tool!r}")
            kind = DEFAULT_KINDS[tool]
        low, high = ports
        if not 0 < low <= high < 65536:
            raise ToolPermanentError(f"process workspace: bad port range {low}-{high}")
        self.name = tool
        self._binary = binary
        self._root = Path(root).absolute()
        self._kind = kind
        self._host = host
        self._ports = (low, high)
        bind_all = host in ("0.0.0.0", "")
        self._probe_host = "127.0.0.1" if bind_all else host
        self._public_host = public_host or self._probe_host
        self._idle_timeout_s = idle_timeout_s
        self._health_timeout_s = health_timeout_s
        self._probe_interval_s = probe_interval_s
        self._stop_timeout_s = stop_timeout_s
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._children_lock = threading.Lock()
        self._closed = threading.Event()
        self._culler: threading.Thread | None = None
        if cull_interval_s is None:
            cull_interval_s = min(max(idle_timeout_s / 10, 5.0), 60.0)
        if idle_timeout_s > 0 and cull_interval_s > 0:
            # Started with the adapter (no I/O until its first round), so a restarted
            # worker culls what the previous one left running.
            self._culler = threading.Thread(
                target=self._cull_loop, args=(cull_interval_s,), name=f"cull-{tool}", daemon=True
            )
            self._culler.start()

    # -- the ToolAdapter interface ------------------------------------------------------

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        self._check_binary()
        dirs = self._dirs(subject)
        with self._locked(subject, progress):
            state = _read_state(dirs.state)
            if state is None:
                state = self._create(subject, dirs)
            self._check_ours(state, subject)
            state = self._ensure_running(state, dirs, progress)
        return self._account(subject, dirs, state, ToolStatus.READY, with_secret=True)

    def status(self, subject: ToolSubject) -> ToolAccount:
        dirs = self._dirs(subject)
        with self._locked(subject, no_progress):
            state = _read_state(dirs.state)
            if state is None:
                return ToolAccount(tool=self.name, status=ToolStatus.ABSENT)
            self._check_ours(state, subject)
            if state.mode == "stopped":
                return self._account(subject, dirs, state, ToolStatus.DISABLED, with_secret=False)
            # Crashed or culled: bring it back, so the link shown next works.
            self._check_binary()
            state = self._ensure_running(state, dirs, no_progress)
        return self._account(subject, dirs, state, ToolStatus.READY, with_secret=False)

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        dirs = self._dirs(subject)
        with self._locked(subject, no_progress):
            state = _read_state(dirs.state)
            if state is not None:
                self._check_ours(state, subject)
                self._stop(state)
                if not drop:
                    _write_state(dirs.state, replace(state, mode="stopped", pid=0, pid_start=""))
            if drop and dirs.base.exists():
                shutil.rmtree(dirs.base)
                with contextlib.suppress(OSError):
                    dirs.base.parent.rmdir()  # the student's folder, once it holds no tool
        logger.info(
            "process workspace: %s of %s %s",
            self.name,
            subject.username,
            "removed" if drop else "stopped",
        )

    def holders(self) -> list[Held]:
        """Every workspace folder of this tool under the root. A culled (or crashed) one
        counts as ready: the next status starts it again; only a deprovisioned one is not."""
        held = []
        for path in sorted(self._root.glob(f"*/{self.name}/{STATE_FILE}")):
            try:
                state = _read_state(path)
            except ToolPermanentError:
                logger.warning("process workspace: skipping unreadable %s", path)
                continue
            folder = path.parent.parent.name
            if state is None or state.tool != self.name or state.username != folder:
                continue
            status = ToolStatus.DISABLED if state.mode == "stopped" else ToolStatus.READY
            held.append(Held(state.username, status, str(path.parent)))
        return held

    # -- supervision ----------------------------------------------------------------------

    def cull_idle(self, now: float | None = None) -> list[str]:
        """Stop this tool's servers idle for idle_timeout_s; returns the usernames culled."""
        if self._idle_timeout_s <= 0:
            return []
        culled = []
        for path in sorted(self._root.glob(f"*/{self.name}/{STATE_FILE}")):
            try:
                state = _read_state(path)
            except ToolPermanentError:
                logger.warning("process workspace: skipping unreadable %s", path)
                continue
            if state is None or state.mode != "running" or not self._alive(state):
                continue  # a crashed one is restarted by its next provision or status
            last = max(state.started_at, self._last_activity(state) or 0.0)
            if (now if now is not None else time.time()) - last < self._idle_timeout_s:
                continue
            with self._try_lock(state.username) as locked:
                if not locked:
                    continue  # someone is provisioning it right now: not idle
                current = _read_state(path)
                if current is None or current != state:
                    continue
                self._stop(state)
                _write_state(path, replace(state, mode="culled", pid=0, pid_start=""))
            logger.info(
                "process workspace: culled %s of %s (idle %.0fs)",
                self.name,
                state.username,
                time.time() - last,
            )
            culled.append(state.username)
        return culled

    def stop_all(self) -> list[str]:
        """Stop every server of this tool under the root, as culled: each comes back when
        next provisioned or asked about (for a development stack shutting down)."""
        stopped = []
        for path in sorted(self._root.glob(f"*/{self.name}/{STATE_FILE}")):
            with contextlib.suppress(ToolPermanentError):
                state = _read_state(path)
                if state is None or state.mode != "running":
                    continue
                with self._lock_file(state.username, no_progress):
                    state = _read_state(path)
                    if state is None or state.mode != "running":
                        continue
                    self._stop(state)
                    _write_state(path, replace(state, mode="culled", pid=0, pid_start=""))
                stopped.append(state.username)
        return stopped

    def close(self) -> None:
        """Stop the culler thread; the servers keep running."""
        self._closed.set()
        if self._culler is not None:
            self._culler.join(timeout=30)

    def _cull_loop(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            try:
                self.cull_idle()
            except Exception:
                logger.exception("process workspace: culling %s failed", self.name)

    # -- processes ------------------------------------------------------------------------

    def _ensure_running(
        self, state: WorkspaceState, dirs: WorkspaceDirs, progress: Progress
    ) -> WorkspaceState:
        """Under the workspace's lock: the server answers when this returns."""
        if self._alive(state):
            self._wait_ready(state, dirs, progress, None)
            if state.mode != "running":
                state = replace(state, mode="running")
                _write_state(dirs.state, state)
            return state
        if state.mode == "running" and state.pid:
            logger.warning(
                "process workspace: %s of %s is gone (pid %s); restarting",
                self.name,
                state.username,
                state.pid,
            )
        if not _port_free(self._host, state.port):
            old = state.port
            state = self._assign_port(state, dirs)
            logger.warning(
                "process workspace: port %s of %s is taken; moved to %s",
                old,
                state.username,
                state.port,
            )
        progress(f"{self.name}: starting the server of {state.username}")
        process = self._spawn(state, dirs)
        state = replace(
            state,
            mode="running",
            pid=process.pid,
            pid_start=process_start(process.pid) or "",
            started_at=time.time(),
            starts=state.starts + 1,
        )
        _write_state(dirs.state, state)
        self._wait_ready(state, dirs, progress, process)
        logger.info(
            "process workspace: %s of %s ready on port %s (pid %s)",
            self.name,
            state.username,
            state.port,
            state.pid,
        )
        return state

    def _spawn(self, state: WorkspaceState, dirs: WorkspaceDirs) -> subprocess.Popen[bytes]:
        for folder in (dirs.home, dirs.work):
            folder.mkdir(parents=True, exist_ok=True)
        self._kind.prepare(dirs)
        env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.setdefault("LANG", "C.UTF-8")
        # The tool's own folder first: Jupyter finds its kernel's python there.
        env["PATH"] = f"{Path(self._binary).parent}{os.pathsep}{env['PATH']}"
        env["HOME"] = str(dirs.home)
        env["SHELL"] = "/bin/bash"
        env.update(self._kind.environment(dirs, state.secret))
        command = self._kind.command(self._binary, self._host, state.port, dirs)
        fd = os.open(dirs.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                command,
                cwd=dirs.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                # Its own session: outlives the worker, and is stopped as one group.
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolPermanentError(f"process workspace: cannot run {self._binary}") from exc
        finally:
            os.close(fd)
        with self._children_lock:
            self._children[process.pid] = process
        return process

    def _alive(self, state: WorkspaceState) -> bool:
        if not state.pid:
            return False
        with self._children_lock:
            child = self._children.get(state.pid)
        if child is not None and child.poll() is not None:
            with self._children_lock:
                self._children.pop(state.pid, None)
            return False
        start = process_start(state.pid)
        return start is not None and start == state.pid_start

    def _stop(self, state: WorkspaceState) -> None:
        """SIGTERM to the server's process group, SIGKILL after stop_timeout_s."""
        if not self._alive(state):
            return
        for sig, wait_s in ((signal.SIGTERM, self._stop_timeout_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not self._alive(state):
                    with self._children_lock:
                        self._children.pop(state.pid, None)
                    return
                time.sleep(0.1)
        raise ToolTransientError(f"process workspace: pid {state.pid} did not stop")

    def _wait_ready(
        self,
        state: WorkspaceState,
        dirs: WorkspaceDirs,
        progress: Progress,
        process: subprocess.Popen[bytes] | None,
    ) -> None:
        base_url = f"http://{self._probe_host}:{state.port}"
        started = time.monotonic()
        with httpx.Client(timeout=2.0, follow_redirects=False) as http:
            while True:
                try:
                    if self._kind.ready(http, base_url, state.secret):
                        return
                except (httpx.HTTPError, ValueError):
                    pass  # not listening yet
                code = process.poll() if process is not None else None
                if code is not None or not self._alive(state):
                    # The log may show the secret in a URL: name it, never quote it.
                    raise ToolPermanentError(
                        f"process workspace: the {self.name} server of {state.username} exited"
                        f" (code {code}) while starting; see {dirs.log}"
                    )
                waited = time.monotonic() - started
                if waited >= self._health_timeout_s:
                    raise ToolTransientError(
                        f"process workspace: the {self.name} server of {state.username}"
                        f" not ready after {waited:.0f}s"
                    )
                progress(f"{self.name}: waiting for {state.username}'s server ({waited:.0f}s)")
                time.sleep(self._probe_interval_s)

    def _last_activity(self, state: WorkspaceState) -> float | None:
        base_url = f"http://{self._probe_host}:{state.port}"
        try:
            with httpx.Client(timeout=5.0) as http:
                return self._kind.last_activity(http, base_url, state.secret)
        except (httpx.HTTPError, ValueError):
            return None

    # -- files, ports, locks --------------------------------------------------------------

    def _check_binary(self) -> None:
        if not os.access(self._binary, os.X_OK):
            raise ToolPermanentError(
                f"process workspace: {self._binary} is not installed"
                f" (run {ENSURE_SCRIPTS.get(self.name, 'its ensure script')})"
            )

    def _dirs(self, subject: ToolSubject) -> WorkspaceDirs:
        if not USERNAME.fullmatch(subject.username):
            raise ToolPermanentError("process workspace: username not usable as a folder name")
        return WorkspaceDirs(self._root / subject.username / self.name)

    def _create(self, subject: ToolSubject, dirs: WorkspaceDirs) -> WorkspaceState:
        dirs.base.mkdir(parents=True, exist_ok=True)
        os.chmod(dirs.base, 0o700)
        state = WorkspaceState(
            tool=self.name,
            username=subject.username,
            user_id=subject.user_id,
            enrollment_id=subject.enrollment_id,
            port=0,
            secret=secrets.token_urlsafe(24),
            mode="running",  # wanted from now on, even if this first start fails
        )
        return self._assign_port(state, dirs)

    def _assign_port(self, state: WorkspaceState, dirs: WorkspaceDirs) -> WorkspaceState:
        """Pick a port no workspace under the root holds and nothing listens on; record it
        before the port lock is released, so two provisions never pick the same one."""
        with self._lock_path(self._root / LOCKS_DIR / "ports.lock", no_progress):
            taken = set()
            for path in self._root.glob(f"*/*/{STATE_FILE}"):
                with contextlib.suppress(ToolPermanentError):
                    other = _read_state(path)
                    if other is not None and path != dirs.state:
                        taken.add(other.port)
            low, high = self._ports
            for port in range(low, high + 1):
                if port not in taken and port != state.port and _port_free(self._host, port):
                    state = replace(state, port=port)
                    _write_state(dirs.state, state)
                    return state
        raise ToolTransientError(f"process workspace: no free port in {low}-{high}")

    def _check_ours(self, state: WorkspaceState, subject: ToolSubject) -> None:
        if state.tool != self.name or state.username != subject.username:
            raise ToolPermanentError("process workspace: the folder belongs to someone else")

    def _locked(
        self, subject: ToolSubject, progress: Progress
    ) -> contextlib.AbstractContextManager[None]:
        return self._lock_file(subject.username, progress)

    def _lock_file(
        self, username: str, progress: Progress
    ) -> contextlib.AbstractContextManager[None]:
        return self._lock_path(self._root / LOCKS_DIR / f"{username}-{self.name}.lock", progress)

    @contextlib.contextmanager
    def _lock_path(self, path: Path, progress: Progress) -> Iterator[None]:
        """An flock (between workers and between threads); heartbeats while it waits."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            started = time.monotonic()
            deadline = started + self._health_timeout_s + 2 * self._stop_timeout_s + 30
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise ToolTransientError(f"process workspace: {path.name} stayed locked")
                progress(f"{self.name}: waiting for {path.stem}")
                time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _try_lock(self, username: str) -> Iterator[bool]:
        path = self._root / LOCKS_DIR / f"{username}-{self.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _account(
        self,
        subject: ToolSubject,
        dirs: WorkspaceDirs,
        state: WorkspaceState,
        status: ToolStatus,
        with_secret: bool,
    ) -> ToolAccount:
        return ToolAccount(
            tool=self.name,
            status=status,
            url=f"http://{self._public_host}:{state.port}{self._kind.url_path}",
            username=subject.username,
            secret=state.secret if with_secret else None,
            details={
                "workspace": str(dirs.work),
                "port": str(state.port),
                "pid": str(state.pid),
            },
        )
