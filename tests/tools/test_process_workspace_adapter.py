"""ProcessWorkspaceAdapter with real JupyterLab and code-server processes, one per student.

The servers come from scripts/tools/ensure-jupyter.sh and ensure-codeserver.sh (cached;
the first run installs them). Where one cannot be installed the tests skip, except under
CI=true, where they fail. Each module starts its servers on a random window of ports below
its own temporary root and removes them at the end.
"""

import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tool_servers

from core.tools.base import ToolAccount, ToolSubject
from core.tools.process_workspace import ProcessWorkspaceAdapter, process_start
from core.tracks import TOOL_CODESERVER, TOOL_JUPYTER
from tests.utils.helpers import require

pytestmark = pytest.mark.workspace_process

# Set in the worker's environment while servers start: it must not reach them.
SENTINEL = "ONRAMP_TEST_WORKER_SECRET"


def installed(name: str, ensure: Callable[[], str]) -> str:
    try:
        return ensure()
    except RuntimeError as exc:
        require(False, name, f"its ensure script failed: {str(exc)[-800:]}")
        raise  # require() has failed or skipped the test


def port_window() -> tuple[int, int]:
    low = random.randrange(30000, 50000, 100)
    return low, low + 99


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def port_of(account: ToolAccount) -> int:
    return int(account.details["port"])


def pid_of(account: ToolAccount) -> int:
    return int(account.details["pid"])


def kill_leftovers(root: Path) -> None:
    """Whatever a failed test left running under `root` (pids checked against /proc)."""
    import json

    for path in root.glob("*/*/state.json"):
        state = json.loads(path.read_text())
        if state["pid"] and process_start(state["pid"]) == state["pid_start"]:
            os.killpg(state["pid"], signal.SIGKILL)


@dataclass
class Workspaces:
    adapter: ProcessWorkspaceAdapter
    root: Path
    binary: str
    ports: tuple[int, int]
    a: ToolSubject
    b: ToolSubject
    account_a: ToolAccount
    account_b: ToolAccount

    def another_adapter(self, **options: object) -> ProcessWorkspaceAdapter:
        """A second adapter over the same folder, as in a restarted or second worker."""
        settings: dict[str, object] = {"idle_timeout_s": 0, "ports": self.ports}
        settings.update(options)
        return ProcessWorkspaceAdapter(
            self.adapter.name,
            self.binary,
            self.root,
            **settings,  # type: ignore[arg-type]
        )


def subject(run_id: str, label: str, n: int) -> ToolSubject:
    username = f"t{run_id}_{label}"
    return ToolSubject(n, username, f"{username}@students.onramp.test", label, f"cs_{run_id}_{n}")


def start_two(tool: str, binary: str, tmp: Path, run_id: str, prefix: str) -> Iterator[Workspaces]:
    root = tmp / "workspaces"
    ports = port_window()
    adapter = ProcessWorkspaceAdapter(
        tool, binary, root, ports=ports, idle_timeout_s=0, probe_interval_s=0.2, stop_timeout_s=5
    )
    a, b = subject(run_id, f"{prefix}a", 1), subject(run_id, f"{prefix}b", 2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SENTINEL, "must-not-leak")
            with ThreadPoolExecutor(2) as pool:
                account_a, account_b = pool.map(adapter.provision, (a, b))
        yield Workspaces(adapter, root, binary, ports, a, b, account_a, account_b)
    finally:
        adapter.close()
        for student in (a, b):
            try:
                adapter.deprovision(student, drop=True)
            except Exception:  # noqa: BLE001 - clean up whatever a failed test left
                pass
        kill_leftovers(root)


# ---- Jupyter ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jupyter_bin() -> str:
    return installed("JupyterLab", tool_servers.ensure_jupyter)


@pytest.fixture(scope="module")
def jupyter(
    jupyter_bin: str, tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> Iterator[Workspaces]:
    yield from start_two(TOOL_JUPYTER, jupyter_bin, tmp_path_factory.mktemp("jupyter"), run_id, "j")


def jupyter_status(account: ToolAccount, token: str | None, path: str = "/api/status") -> int:
    base = account.url.removesuffix("/lab")
    headers = {"Authorization": f"token {token}"} if token is not None else {}
    return httpx.get(base + path, headers=headers, timeout=10).status_code


def test_jupyter_each_student_gets_a_server_only_their_token_opens(jupyter: Workspaces) -> None:
    a, b = jupyter.account_a, jupyter.account_b
    assert a.status == b.status == "ready"
    assert a.url == f"http://127.0.0.1:{port_of(a)}/lab"
    assert port_of(a) != port_of(b)
    assert jupyter.ports[0] <= port_of(a) <= jupyter.ports[1]
    assert a.username == jupyter.a.username and a.development is False
    assert a.secret and b.secret and a.secret != b.secret
    assert jupyter_status(a, a.secret) == 200
    assert jupyter_status(a, None) == 403
    assert jupyter_status(a, b.secret) == 403
    assert jupyter_status(b, b.secret) == 200
    assert jupyter_status(b, a.secret) == 403
    # Own folders; the secret is in the private state file, not in the server's log.
    folder = jupyter.root / jupyter.a.username / "jupyter"
    assert a.details["workspace"] == str(folder / "work")
    assert (folder / "state.json").stat().st_mode & 0o077 == 0
    assert a.secret not in (folder / "server.log").read_text()
    # The server does not inherit the worker's environment (and its secrets).
    environ = Path(f"/proc/{pid_of(a)}/environ").read_bytes()
    assert SENTINEL.encode() not in environ
    assert f"HOME={folder / 'home'}".encode() in environ


def test_jupyter_provision_again_is_idempotent(jupyter: Workspaces) -> None:
    with ThreadPoolExecutor(4) as pool:
        accounts = list(pool.map(lambda _: jupyter.adapter.provision(jupyter.a), range(4)))
    for account in accounts:
        assert (account.url, account.secret, pid_of(account)) == (
            jupyter.account_a.url,
            jupyter.account_a.secret,
            pid_of(jupyter.account_a),
        )


def test_jupyter_a_new_worker_finds_the_running_servers(jupyter: Workspaces) -> None:
    other = jupyter.another_adapter()
    try:
        status = other.status(jupyter.b)
        assert status.status == "ready" and status.secret is None
        assert pid_of(status) == pid_of(jupyter.account_b)
        again = other.provision(jupyter.b)
        assert (again.url, again.secret) == (jupyter.account_b.url, jupyter.account_b.secret)
        assert pid_of(again) == pid_of(jupyter.account_b)
    finally:
        other.close()


def test_jupyter_killed_server_is_restarted_by_status(jupyter: Workspaces) -> None:
    before = jupyter.adapter.provision(jupyter.a)
    os.killpg(pid_of(before), signal.SIGKILL)
    assert wait_until(lambda: refused(port_of(before)))
    status = jupyter.adapter.status(jupyter.a)
    assert status.status == "ready"
    assert status.url == before.url and pid_of(status) != pid_of(before)
    assert jupyter_status(status, before.secret) == 200
    assert jupyter.adapter.provision(jupyter.a).secret == before.secret


def test_jupyter_idle_server_is_culled_and_comes_back(jupyter: Workspaces) -> None:
    a, b = jupyter.account_a, jupyter.account_b
    culler = jupyter.another_adapter(idle_timeout_s=4, cull_interval_s=0.5)
    try:
        # A is in use (contents API calls count as activity), B is left alone.
        def b_culled() -> bool:
            assert jupyter_status(a, a.secret, "/api/contents") == 200
            return refused(port_of(b))

        assert wait_until(b_culled, timeout_s=60)
        assert jupyter_status(a, a.secret) == 200
    finally:
        culler.close()
    status = jupyter.adapter.status(jupyter.b)
    assert status.status == "ready" and status.url == b.url
    assert jupyter_status(status, b.secret) == 200


def test_jupyter_deprovision_stops_and_drop_deletes(jupyter: Workspaces) -> None:
    adapter, student = jupyter.adapter, jupyter.a
    running = adapter.provision(student)
    adapter.deprovision(student)
    assert refused(port_of(running))
    assert process_start(pid_of(running)) is None
    assert adapter.status(student).status == "disabled"
    assert refused(port_of(running))  # status does not restart a deprovisioned one
    adapter.deprovision(student)  # idempotent
    restored = adapter.provision(student)
    assert (restored.url, restored.secret) == (running.url, running.secret)
    assert jupyter_status(restored, running.secret) == 200
    adapter.deprovision(student, drop=True)
    assert refused(port_of(running))
    assert not (jupyter.root / student.username).exists()
    assert adapter.status(student).status == "absent"
    adapter.deprovision(student, drop=True)


# ---- code-server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codeserver_bin() -> str:
    return installed("code-server", tool_servers.ensure_codeserver)


@pytest.fixture(scope="module")
def codeserver(
    codeserver_bin: str, tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> Iterator[Workspaces]:
    yield from start_two(
        TOOL_CODESERVER, codeserver_bin, tmp_path_factory.mktemp("codeserver"), run_id, "c"
    )


def login(account: ToolAccount, password: str) -> httpx.Response:
    return httpx.post(account.url + "login", data={"password": password}, timeout=20)


def test_codeserver_password_opens_only_its_own_workspace(codeserver: Workspaces) -> None:
    a, b = codeserver.account_a, codeserver.account_b
    assert a.status == b.status == "ready" and a.development is False
    assert a.url == f"http://127.0.0.1:{port_of(a)}/" and port_of(a) != port_of(b)
    assert a.secret and b.secret and a.secret != b.secret
    assert httpx.get(a.url, timeout=20, follow_redirects=True).url.path == "/login"
    ok = login(a, a.secret)
    assert ok.status_code == 302 and "code-server-session" in ok.cookies
    # Logged in, the editor opens on the student's own folder.
    page = httpx.get(a.url, cookies=ok.cookies, timeout=20, follow_redirects=True)
    assert page.status_code == 200 and page.url.path == "/"
    assert page.url.params["folder"] == a.details["workspace"]
    for wrong in ("not-the-password", b.secret):
        refused_login = login(a, wrong)
        assert refused_login.status_code == 200  # the login page again, no session
        assert "code-server-session" not in refused_login.cookies
    environ = Path(f"/proc/{pid_of(a)}/environ").read_bytes()
    assert SENTINEL.encode() not in environ and b"PORT=" not in environ


def test_codeserver_idempotent_and_restarted_after_a_crash(codeserver: Workspaces) -> None:
    adapter, b = codeserver.adapter, codeserver.account_b
    again = adapter.provision(codeserver.b)
    assert (again.url, again.secret, pid_of(again)) == (b.url, b.secret, pid_of(b))
    os.killpg(pid_of(b), signal.SIGKILL)
    assert wait_until(lambda: refused(port_of(b)))
    back = adapter.provision(codeserver.b)
    assert (back.url, back.secret) == (b.url, b.secret) and pid_of(back) != pid_of(b)
    assert login(back, b.secret).status_code == 302


def test_codeserver_idle_server_is_culled_and_comes_back(
    codeserver: Workspaces, run_id: str
) -> None:
    adapter, b = codeserver.adapter, codeserver.account_b
    fresh = subject(run_id, "cfresh", 3)
    try:
        b_active_before = time.time()  # B's last activity (its start or login) was earlier
        in_use = adapter.provision(fresh)
        time.sleep(3)
        login_started = time.time()  # the heartbeat is taken as the request arrives
        assert login(in_use, in_use.secret or "").status_code == 302
        now = time.time()
        # Between the two idle times, whatever a slow login took.
        idle_timeout = now - (b_active_before + login_started) / 2
        culler = codeserver.another_adapter(idle_timeout_s=idle_timeout, cull_interval_s=0)
        culled = culler.cull_idle(now)
        assert codeserver.b.username in culled and fresh.username not in culled
        assert refused(port_of(b)) and not refused(port_of(in_use))
        back = adapter.status(codeserver.b)
        assert back.status == "ready" and back.url == b.url
        assert login(back, b.secret or "").status_code == 302
    finally:
        adapter.deprovision(fresh, drop=True)


def test_codeserver_deprovision_stops_and_drop_deletes(codeserver: Workspaces) -> None:
    adapter, student = codeserver.adapter, codeserver.a
    running = adapter.provision(student)
    adapter.deprovision(student)
    assert refused(port_of(running)) and process_start(pid_of(running)) is None
    assert adapter.status(student).status == "disabled"
    adapter.deprovision(student, drop=True)
    assert not (codeserver.root / student.username).exists()
    assert adapter.status(student).status == "absent"
