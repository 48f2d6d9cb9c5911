"""Start and stop real local tool servers (Superset, Prefect, Podman) for tests and benchmarks.

Also installs the workspace servers (JupyterLab, code-server) that the process workspace
adapter starts itself.

Used by tests/tools/conftest.py and bench/tools_bench.py; also runnable by hand:
`python scripts/tools/tool_servers.py superset|prefect|podman` starts one and prints how to
reach it (Ctrl-C stops it). Servers listen on a free loopback port and keep their state in
a caller-given work directory, so parallel runs do not share data. Installs are cached
under ${ONRAMP_TOOLS_CACHE:-~/.cache/onramp} by the ensure-*.sh scripts beside this file.
"""

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent
TEST_IMAGE = "localhost/onramp-test-workspace:1"
TEST_IMAGE_PORT = 8080


def tools_cache() -> Path:
    return Path(os.environ.get("ONRAMP_TOOLS_CACHE") or Path.home() / ".cache" / "onramp")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ToolUnavailable(RuntimeError):
    """An ensure-*.sh script could not install or start its tool (no root, no registry...)."""


def run_ensure(script: str, env: dict[str, str] | None = None) -> str:
    """Run an ensure-*.sh script; return its last output line. Slow only the first time."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPTS / script)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise ToolUnavailable(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    logger.info("%s done in %.1fs", script, time.monotonic() - started)
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@dataclass
class RunningServer:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_username: str = ""
    admin_password: str = ""
    auth_string: str = ""  # Prefect: PREFECT_SERVER_API_AUTH_STRING, as in production

    def stop(self) -> None:
        """Stop the server's own process group (it was started in a new session)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _start(name: str, command: list[str], env: dict[str, str], workdir: Path) -> tuple:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    process = subprocess.Popen(
        command,
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process, log_path


def _wait_healthy(server: RunningServer, health_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{server.name} not healthy after {timeout_s:.0f}s:\n{server.log_tail()}")


def start_superset(workdir: Path, timeout_s: float = 180.0) -> RunningServer:
    """Superset on a free port with a private copy of the cached, initialised metadata DB."""
    run_ensure("ensure-superset.sh")
    cache = tools_cache()
    home = cache / "superset-home"
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(home / "superset.db", workdir / "superset.db")
    config = workdir / "superset_config.py"
    config.write_text(
        (home / "superset_config.py").read_text()
        + f'\nSQLALCHEMY_DATABASE_URI = "sqlite:///{workdir}/superset.db"\n'
    )
    config.chmod(0o600)
    env = {
        **os.environ,
        "SUPERSET_CONFIG_PATH": str(config),
        "SUPERSET_HOME": str(workdir),
        "FLASK_APP": "superset",
    }
    port = free_port()
    command = [str(cache / "superset-venv" / "bin" / "superset"), "run"]
    command += ["-h", "127.0.0.1", "-p", str(port), "--with-threads"]
    process, log_path = _start("superset", command, env, workdir)
    server = RunningServer(
        name="superset",
        url=f"http://127.0.0.1:{port}",
        process=process,
        log_path=log_path,
        admin_username="admin",
        admin_password=(home / "admin-password").read_text().strip(),
    )
    _wait_healthy(server, server.url + "/health", timeout_s)
    return server


def start_prefect(workdir: Path, timeout_s: float = 120.0) -> RunningServer:
    """A Prefect server with its own PREFECT_HOME (SQLite) on a free port; url ends in /api.

    Protected by a fresh auth string, like production: clients send `server.auth_string`."""
    run_ensure("ensure-prefect.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth_string = f"onramp:{secrets.token_urlsafe(18)}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
        # No internet here: skip what would phone home.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    command = [str(tools_cache() / "prefect-venv" / "bin" / "prefect"), "server", "start"]
    process, log_path = _start("prefect", command, env, workdir)
    server = RunningServer(
        "prefect", f"http://127.0.0.1:{port}/api", process, log_path, auth_string=auth_string
    )
    _wait_healthy(server, server.url + "/health", timeout_s)  # answered without credentials
    return server


def ensure_podman() -> str:
    """The Docker-API socket URL of Podman, installed and started if needed, on which a
    container of TEST_IMAGE (built if needed) was just started."""
    return run_ensure(
        "ensure-podman.sh",
        {"ONRAMP_TEST_IMAGE": TEST_IMAGE, "ONRAMP_TEST_IMAGE_PORT": str(TEST_IMAGE_PORT)},
    )


def ensure_jupyter() -> str:
    """The `jupyter` binary of the cached JupyterLab virtualenv (installed if needed)."""
    return run_ensure("ensure-jupyter.sh")


def ensure_codeserver() -> str:
    """The `code-server` binary of the cached npm install (installed if needed)."""
    return run_ensure("ensure-codeserver.sh")


def ensure_test_image() -> str:
    """A tiny local workspace image (static busybox httpd); no registry is reachable here.
    ensure-podman.sh builds it."""
    exists = subprocess.run(["podman", "image", "exists", TEST_IMAGE], check=False)
    if exists.returncode != 0:
        ensure_podman()
    return TEST_IMAGE


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which == "podman":
        logger.info("DOCKER_HOST=%s", ensure_podman())
        logger.info("test image: %s", ensure_test_image())
        return
    starters = {"superset": start_superset, "prefect": start_prefect}
    if which not in starters:
        raise SystemExit("usage: tool_servers.py superset|prefect|podman")
    workdir = Path(tempfile.mkdtemp(prefix=f"onramp-{which}-"))
    server = starters[which](workdir)
    logger.info("%s running at %s (state in %s); Ctrl-C stops it", which, server.url, workdir)
    if server.admin_username:
        logger.info("admin user %s; password in %s", server.admin_username, tools_cache())
    if server.auth_string:
        secret = workdir / "auth-string"
        secret.write_text(server.auth_string + "\n")
        secret.chmod(0o600)
        logger.info("its PREFECT_API_AUTH_STRING is in %s", secret)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
