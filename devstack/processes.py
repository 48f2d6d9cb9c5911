"""Onramp's services as real subprocesses, for benchmarks and chaos tests.

A Temporal dev server (SQLite file, restartable), the API (uvicorn), the worker
(`worker.py`, so it can be measured, killed with SIGKILL and restarted), the Stripe
sandbox (`python -m sandbox`) and private PostgreSQL clusters (initdb + pg_ctl on a free
port) that a test may stop and start without touching the machine's shared server.
Every wait here is bounded in time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import psycopg
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from core.contracts import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
# The tree the app's processes run from: another checkout measures a proposed change (A/B).
APP_ROOT = Path(os.environ.get("ONRAMP_BENCH_APP_ROOT") or ROOT).resolve()
PYTHON = sys.executable
log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def venv_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed: run `make install`")
    return found


def settings_env(**values: object) -> dict[str, str]:
    """Settings as environment variables (pydantic-settings reads field names upper-cased)."""
    return {key.upper(): str(value) for key, value in values.items()}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a live process, in KiB."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


class Process:
    """One subprocess in its own session, logging to a file; stop() is SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env or {})
        self.port = port
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"onramp-{name}-"))
        self.log_path = self.log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} is not running"
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> Self:
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"--- start {self.starts}: {' '.join(self.argv)}\n".encode())
            out.flush()
            env = {**os.environ, **self.env}
            if APP_ROOT != ROOT:
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [str(APP_ROOT), env.get("PYTHONPATH")])
                )
            self.popen = subprocess.Popen(
                self.argv,
                cwd=APP_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_port(self, timeout: float = 60.0) -> None:
        assert self.port is not None
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not open port {self.port} in {timeout}s")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        """SIGKILL the whole process group: no cleanup, no graceful shutdown."""
        if self.running():
            assert self.popen is not None
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.running():
            return
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %ss; killing", self.name, timeout)
            self.kill9()
        except ProcessLookupError:
            pass

    def memory_mib(self) -> dict[str, float]:
        """{"rss": now, "peak": high-water mark} in MiB; empty once the process has exited."""
        if not self.running():
            return {}
        kib = memory_kib(self.pid)
        return {"rss": kib.get("VmRSS", 0) / 1024, "peak": kib.get("VmHWM", 0) / 1024}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---- Temporal ---------------------------------------------------------------------------


class TemporalServer(Process):
    """`temporal server start-dev` with a SQLite file (kept across restarts) and our
    search attributes, headless, on a free port."""

    def __init__(self, db_dir: Path | None = None, port: int | None = None) -> None:
        self.db_dir = db_dir or Path(tempfile.mkdtemp(prefix="onramp-temporal-"))
        port = port or free_port()
        argv = [
            venv_binary("temporal"), "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(port), "--headless", "--db-filename", str(self.db_dir / "temporal.db"),
            "--log-level", "error",
        ]  # fmt: skip
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        super().__init__("temporal", argv, log_dir=self.db_dir, port=port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start_async(self, within_s: float = 60.0) -> Self:
        super().start()
        await self._wait_ready(within_s)
        return self

    async def _wait_ready(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while True:
            self._check_alive()
            if port_open(self.port or 0):
                try:
                    client = await Client.connect(self.address)
                    await client.count_workflows()
                    return
                except Exception:  # noqa: BLE001 (not ready yet)
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"temporal did not become ready in {within_s}s")
            await asyncio.sleep(0.2)


async def wait_for_poller(
    client: Client, task_queue: str, pid: int, within_s: float = 60.0
) -> None:
    """Until a worker with process id `pid` polls `task_queue` (the SDK's default identity
    is "pid@host"), so a freshly (re)started worker is known to be taking tasks."""
    deadline = time.monotonic() + within_s
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    prefix = f"{pid}@"
    while True:
        try:
            found = await client.workflow_service.describe_task_queue(request)
            if any(p.identity.startswith(prefix) for p in found.pollers):
                return
        except Exception:  # noqa: BLE001 (server restarting)
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no poller from pid {pid} on {task_queue} within {within_s}s")
        await asyncio.sleep(0.1)


# ---- the app ----------------------------------------------------------------------------


def worker_process(env: Mapping[str, str], log_dir: Path | None = None) -> Process:
    return Process("worker", [PYTHON, str(APP_ROOT / "worker.py")], env, log_dir)


def api_process(env: Mapping[str, str], port: int, log_dir: Path | None = None) -> Process:
    argv = [
        PYTHON, "-m", "uvicorn", "--factory", "api.main:app_factory", "--host", "127.0.0.1",
        "--port", str(port), "--no-access-log", "--log-level", "warning", "--no-proxy-headers",
    ]  # fmt: skip
    return Process("api", argv, env, log_dir, port=port)


def sandbox_process(
    port: int, webhook_secret: str, webhook_url: str = "", log_dir: Path | None = None
) -> Process:
    """The offline Stripe. An empty `webhook_url` sends no webhooks (events are recorded):
    the caller delivers its own. Warnings only, so a request costs no log line."""
    env = {
        "SANDBOX_PORT": str(port),
        "SANDBOX_WEBHOOK_URL": webhook_url,
        "STRIPE_WEBHOOK_SECRET": webhook_secret,
        "SANDBOX_LOG_LEVEL": "WARNING",
    }
    return Process("sandbox", [PYTHON, "-m", "sandbox"], env, log_dir, port=port)


async def wait_http(url: str, within_s: float = 60.0, process: Process | None = None) -> None:
    """Until `url` answers any HTTP status."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            if process is not None:
                process._check_alive()
            try:
                await http.get(url)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {within_s}s")
            await asyncio.sleep(0.1)


# ---- private PostgreSQL clusters --------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return candidates[-1].parent


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth, fsync off) that tests may stop and start.

    PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
    """

    def __init__(self, port: int | None = None) -> None:
        self.bin = postgres_bin_dir()
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix="onramp-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        self.initialised = False

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=timeout, cwd=self.base
        )

    def init(self) -> Self:
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.initialised = True
        return self

    def start(self, timeout: float = 60.0) -> Self:
        if not self.initialised:
            self.init()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.base} -c fsync=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
            "-o", options, "-w", "-t", str(int(timeout)), "start",
            timeout=timeout + 5,
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """mode: "fast" (clean, disconnects clients) or "immediate" (like a crash)."""
        if self.running():
            self._run(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                "-t", str(int(timeout)), "stop",
                timeout=timeout + 5,
            )  # fmt: skip

    def running(self) -> bool:
        return self.initialised and (self.data / "postmaster.pid").exists() and port_open(self.port)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.SubprocessError as err:
            log.warning("private postgres on %s did not stop: %s", self.port, err)
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
