"""`make dev`: runs the whole product locally and stops all of it on Ctrl-C or SIGTERM.

Temporal dev server (Web UI, search attributes registered), mail catcher, the offline
Stripe sandbox (only when STRIPE_SECRET_KEY is unset), the worker and the API.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import Settings, get_settings
from core.urls import WEBHOOK_PATH
from devstack import use_development_mode
from devstack.tools import DevTools, plan_tools, stop_workspaces

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
log = logging.getLogger("onramp.dev")


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    user: str | None = None  # run as this system user (PostgreSQL refuses root)
    start_timeout_s: float = 60.0


def _bin(name: str) -> str:
    venv = Path(sys.executable).parent / name
    return str(venv) if venv.exists() else (shutil.which(name) or name)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_for_port(service: Service) -> None:
    assert service.port is not None
    deadline = time.monotonic() + service.start_timeout_s
    while not port_open(service.port):
        if service.process and service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} did not open port {service.port}")
        time.sleep(0.2)


def plan(settings: Settings, tools: DevTools) -> list[Service]:
    py = sys.executable
    host, _, port = settings.temporal_address.partition(":")
    services: list[Service] = []
    if host in ("127.0.0.1", "localhost"):
        ui_port = int(settings.temporal_ui_url.rsplit(":", 1)[-1].split("/")[0])
        argv = [
            _bin("temporal"), "server", "start-dev", "--ip", "127.0.0.1", "--port", port,
            "--ui-port", str(ui_port), "--db-filename", str(RUN_DIR / "temporal.db"),
            "--namespace", settings.temporal_namespace, "--log-level", "warn",
        ]  # fmt: skip
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        services.append(Service("temporal", argv, int(port)))
    if settings.smtp_host in ("127.0.0.1", "localhost"):
        services.append(
            Service(
                "mail",
                [py, "-m", "devstack.mailcatcher", "--smtp-port", str(settings.smtp_port),
                 "--http-port", str(settings.mailcatcher_port)],
                settings.smtp_port,
            )
        )  # fmt: skip
    if settings.stripe_sandbox:
        services.append(
            Service(
                "stripe-sandbox",
                [py, "-m", "sandbox"],
                settings.sandbox_port,
                env={
                    "SANDBOX_PORT": str(settings.sandbox_port),
                    "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{settings.port}{WEBHOOK_PATH}",
                    "SANDBOX_PUBLIC_URL": f"http://127.0.0.1:{settings.sandbox_port}",
                    "STRIPE_WEBHOOK_SECRET": settings.stripe_webhook_secret,
                },
            )
        )
    services += [
        Service(t.name, t.argv, t.port, t.env, user=t.user, start_timeout_s=t.start_timeout_s)
        for t in tools.servers
    ]
    services.append(Service("worker", [py, str(ROOT / "worker.py")], env=tools.env))
    services.append(
        Service(
            "api",
            # The app reads X-Forwarded-For itself, from TRUSTED_PROXIES only.
            [py, "-m", "uvicorn", "--factory", "api.main:app_factory", "--host", "127.0.0.1",
             "--port", str(settings.port), "--no-access-log", "--no-proxy-headers"],
            settings.port,
            env=tools.env,
        )
    )  # fmt: skip
    return services


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[dev] %(message)s")
    use_development_mode()  # before the settings are read; the children inherit it
    settings = get_settings()
    RUN_DIR.mkdir(exist_ok=True)
    try:
        tools = plan_tools(settings, RUN_DIR)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
        log.error("could not prepare the tool servers: %s (DEV_REAL_TOOLS=false skips them)", err)
        return 1
    services = plan(settings, tools)
    busy = [s for s in services if s.port and port_open(s.port)]
    if busy:
        for s in busy:
            log.error("port %s for %s is already in use", s.port, s.name)
        return 1
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for service in services:
            log.info("starting %s", service.name)
            service.process = subprocess.Popen(
                service.argv,
                cwd=ROOT,
                env={**os.environ, **service.env},
                start_new_session=True,
                user=service.user,
            )
            if service.port:
                wait_for_port(service)
            if stopping:
                return 0
        log.info("Onramp is running:")
        log.info("  student pages and API  %s", settings.public_base_url)
        log.info("  API docs               %s/docs", settings.public_base_url)
        log.info("  Temporal Web UI        %s", settings.temporal_ui_url)
        if settings.smtp_host in ("127.0.0.1", "localhost"):
            log.info("  mail catcher           http://127.0.0.1:%s", settings.mailcatcher_port)
        if settings.stripe_sandbox:
            log.info("  Stripe sandbox         http://127.0.0.1:%s (card 4242 4242 4242 4242)",
                     settings.sandbox_port)  # fmt: skip
        for line in tools.lines:
            log.info("  %s", line)
        log.info("Ctrl-C stops everything.")
        while not stopping:
            for service in services:
                assert service.process is not None
                if service.process.poll() is not None:
                    log.error(
                        "%s exited with %s; stopping", service.name, service.process.returncode
                    )
                    return 1
            time.sleep(0.5)
        return 0
    except RuntimeError as err:
        log.error("%s", err)
        return 1
    finally:
        for service in reversed(services):
            if service.process and service.process.poll() is None:
                os.killpg(service.process.pid, signal.SIGTERM)
        for service in reversed(services):
            if service.process:
                try:
                    service.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(service.process.pid, signal.SIGKILL)
        stop_workspaces(tools)
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
