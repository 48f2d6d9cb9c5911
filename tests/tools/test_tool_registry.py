"""Registry, development stand-ins, fault injection and error classification (no tool servers)."""

import base64
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.settings import Settings, development_tools
from core.tools import development
from core.tools.base import ToolPermanentError, ToolSubject, ToolTransientError
from core.tools.development import DevelopmentToolAdapter, reset_development_state
from core.tools.faults import FAULTS_DIR_ENV, FAULTS_ENV, FaultInjectingAdapter, FaultPlan
from core.tools.postgres_schema import PostgresSchemaAdapter
from core.tools.prefect import PrefectAdapter
from core.tools.process_workspace import ProcessWorkspaceAdapter
from core.tools.registry import build_adapters
from core.tools.superset import SupersetAdapter
from core.tools.workspace import DockerWorkspaceAdapter
from core.tracks import ALL_TOOLS

CLOSED = "http://127.0.0.1:1"


def settings(**values: object) -> Settings:
    values.setdefault("app_env", "test")  # production (the default) ignores fault plans
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    monkeypatch.setenv(FAULTS_DIR_ENV, str(tmp_path / "faults"))
    reset_development_state()
    yield
    reset_development_state()


def test_nothing_configured_means_every_tool_is_a_stand_in() -> None:
    s = settings()
    adapters = build_adapters(s)
    assert set(adapters) == set(ALL_TOOLS)
    assert all(isinstance(a, DevelopmentToolAdapter) and a.development for a in adapters.values())
    assert development_tools(s) == list(ALL_TOOLS)


def test_configured_servers_get_real_adapters_without_io() -> None:
    s = settings(
        learning_database_url="postgresql://postgres@127.0.0.1:1/learning",
        superset_url=CLOSED,
        superset_admin_password="x",
        prefect_api_url=CLOSED + "/api",
        docker_host="unix:///run/onramp-no-such.sock",
    )
    adapters = build_adapters(s)  # nothing listens there: building must not connect
    assert isinstance(adapters["postgres"], PostgresSchemaAdapter)
    assert isinstance(adapters["superset"], SupersetAdapter)
    assert isinstance(adapters["prefect"], PrefectAdapter)
    assert isinstance(adapters["jupyter"], DockerWorkspaceAdapter)
    assert isinstance(adapters["codeserver"], DockerWorkspaceAdapter)
    assert not any(a.development for a in adapters.values())
    assert development_tools(s) == []


def test_process_backend_gets_process_workspaces_without_io(
    tmp_path: Path, make_subject: Callable[..., ToolSubject]
) -> None:
    root = tmp_path / "workspaces"
    s = settings(
        workspace_backend="process",
        workspace_root=str(root),
        jupyter_bin=str(tmp_path / "no-such-jupyter"),
        docker_host="unix:///run/onramp-no-such.sock",  # process wins over docker
    )
    adapters = build_adapters(s)
    workspaces = [adapters["jupyter"], adapters["codeserver"]]
    try:
        assert all(isinstance(a, ProcessWorkspaceAdapter) for a in workspaces)
        assert not any(a.development for a in workspaces)
        assert "jupyter" not in development_tools(s) and "codeserver" not in development_tools(s)
        assert not root.exists()  # building created nothing
        # A missing binary is a configuration problem that names the fix.
        with pytest.raises(ToolPermanentError, match="ensure-jupyter.sh"):
            adapters["jupyter"].provision(make_subject())
    finally:
        for adapter in workspaces:
            assert isinstance(adapter, ProcessWorkspaceAdapter)
            adapter.close()


def test_production_refuses_the_process_backend() -> None:
    s = settings(app_env="production", workspace_backend="process")
    with pytest.raises(RuntimeError, match="WORKSPACE_BACKEND=process"):
        s.check_production()


def test_production_refuses_stand_ins() -> None:
    s = settings(app_env="production", prefect_api_url=CLOSED + "/api")
    assert "prefect" not in development_tools(s)
    assert "postgres" in development_tools(s)


def test_development_adapter_is_labelled_and_coherent(
    make_subject: Callable[..., ToolSubject],
) -> None:
    adapter = DevelopmentToolAdapter("superset", latency_ms=50)
    subject = make_subject()
    assert adapter.status(subject).status == "absent"
    started = time.monotonic()
    account = adapter.provision(subject)
    assert time.monotonic() - started >= 0.05
    assert account.development is True
    assert account.url == f"http://127.0.0.1:8000/dev-tools/superset/{subject.username}"
    assert account.details == {"note": "development stand-in: no real superset server configured"}
    assert adapter.provision(subject).secret == account.secret
    adapter.deprovision(subject)
    assert adapter.status(subject).status == "disabled"
    assert adapter.provision(subject).status == "ready"
    adapter.deprovision(subject, drop=True)
    assert adapter.status(subject).status == "absent"


def test_development_adapter_reports_progress_through_a_long_wait(
    make_subject: Callable[..., ToolSubject], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in slower than the heartbeat timeout must heartbeat, as the real adapters do."""
    monkeypatch.setattr(development, "HEARTBEAT_EVERY_S", 0.02)
    notes: list[str] = []
    adapter = DevelopmentToolAdapter("prefect", latency_ms=90)
    started = time.monotonic()
    adapter.provision(make_subject(), progress=notes.append)
    assert time.monotonic() - started >= 0.09
    assert len(notes) >= 3 and set(notes) == {"development stand-in: waiting"}


def test_transient_faults_then_success_counted_across_restarts(
    monkeypatch: pytest.MonkeyPatch, make_subject: Callable[..., ToolSubject]
) -> None:
    monkeypatch.setenv(FAULTS_ENV, '{"superset": {"transient": 2}, "prefect": {"permanent": true}}')
    subject = make_subject()
    for attempt in (1, 2):
        # A fresh registry each time, as after a worker restart.
        with pytest.raises(ToolTransientError, match=f"{attempt}/2"):
            build_adapters(settings())["superset"].provision(subject)
    adapters = build_adapters(settings())
    assert adapters["superset"].provision(subject).status == "ready"
    assert isinstance(adapters["superset"], FaultInjectingAdapter)
    assert adapters["superset"].attempts(subject) == 3
    # Another student starts their own count.
    with pytest.raises(ToolTransientError):
        adapters["superset"].provision(make_subject())
    for _ in range(3):
        with pytest.raises(ToolPermanentError):
            adapters["prefect"].provision(subject)
    assert adapters["postgres"].provision(subject).status == "ready"


def test_faults_are_ignored_in_production(
    monkeypatch: pytest.MonkeyPatch, make_subject: Callable[..., ToolSubject]
) -> None:
    monkeypatch.setenv(FAULTS_ENV, '{"superset": {"permanent": true}}')
    adapters = build_adapters(settings(app_env="production"))
    assert not isinstance(adapters["superset"], FaultInjectingAdapter)


def test_faults_naming_an_unknown_tool_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULTS_ENV, '{"supserset": {"transient": 1}}')
    with pytest.raises(ValueError, match="supserset"):
        build_adapters(settings())


def test_fault_counter_is_safe_across_threads(
    tmp_path: Path, make_subject: Callable[..., ToolSubject]
) -> None:
    inner = DevelopmentToolAdapter("prefect")
    adapter = FaultInjectingAdapter(inner, FaultPlan(transient=10), tmp_path)
    subject = make_subject()

    def call() -> None:
        for _ in range(5):
            try:
                adapter.provision(subject)
            except ToolTransientError:
                pass

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert adapter.attempts(subject) == 20


class _Status(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status in the path: /503 -> 503."""

    def _reply(self) -> None:
        status = int(self.path.strip("/").split("/")[0])
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"message": "secret-looking body"}')

    do_GET = do_POST = do_PATCH = do_DELETE = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def status_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, ToolTransientError),
        (500, ToolTransientError),
        (429, ToolTransientError),
        (400, ToolPermanentError),
        (403, ToolPermanentError),
        (422, ToolPermanentError),
    ],
)
def test_http_statuses_are_classified(
    status_server: str,
    status: int,
    error: type[Exception],
    make_subject: Callable[..., ToolSubject],
) -> None:
    # Prefect's work pool create goes to {api}/work_pools/: point the API at /<status>.
    adapter = PrefectAdapter(f"{status_server}/{status}")
    with pytest.raises(error) as info:
        adapter.status(make_subject())
    assert "secret-looking" not in str(info.value)


def test_closed_ports_are_transient(make_subject: Callable[..., ToolSubject]) -> None:
    subject = make_subject()
    with pytest.raises(ToolTransientError):
        SupersetAdapter(CLOSED, "admin", "pw").provision(subject)
    with pytest.raises(ToolTransientError):
        PrefectAdapter(CLOSED + "/api").provision(subject)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 404 (no such work pool) and keeps each request's Authorization header."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_prefect_gets_the_configured_auth_string(make_subject: Callable[..., ToolSubject]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        adapters = build_adapters(
            settings(prefect_api_url=url, prefect_api_auth_string="onramp:s3cr3t:with-colon")
        )
        assert adapters["prefect"].status(make_subject()).status == "absent"
    finally:
        server.shutdown()
    # What Prefect's own client sends: HTTP Basic over the whole "user:password" string.
    assert _Recorder.seen == ["Basic " + base64.b64encode(b"onramp:s3cr3t:with-colon").decode()]
