"""PrefectAdapter against a real Prefect server started for the session."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tool_servers

from activities.tools.base import ToolSubject
from activities.tools.prefect import PrefectAdapter, work_pool_name

pytestmark = pytest.mark.prefect


@pytest.fixture
def adapter(prefect_server: tool_servers.RunningServer) -> PrefectAdapter:
    return PrefectAdapter(prefect_server.url)


def get_pool(server: tool_servers.RunningServer, name: str) -> httpx.Response:
    return httpx.get(f"{server.url}/work_pools/{name}", timeout=10)


def test_provision_creates_a_process_work_pool_with_a_default_queue(
    adapter: PrefectAdapter,
    prefect_server: tool_servers.RunningServer,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    account = adapter.provision(subject)
    name = work_pool_name(subject.username)

    pool = get_pool(prefect_server, name)
    assert pool.status_code == 200
    assert pool.json()["type"] == "process"
    assert pool.json()["is_paused"] is False
    queue = httpx.get(f"{prefect_server.url}/work_pools/{name}/queues/default", timeout=10)
    assert queue.status_code == 200
    assert account.status == "ready"
    assert account.details["work_pool_id"] == pool.json()["id"]
    assert account.details["work_queue"] == "default"
    assert name in account.url


def test_second_provision_changes_nothing(
    adapter: PrefectAdapter,
    prefect_server: tool_servers.RunningServer,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    first = adapter.provision(subject)
    before = get_pool(prefect_server, work_pool_name(subject.username)).json()
    second = adapter.provision(subject)
    after = get_pool(prefect_server, work_pool_name(subject.username)).json()
    assert first.details["work_pool_id"] == second.details["work_pool_id"] == after["id"]
    assert before["updated"] == after["updated"]


def test_concurrent_provisions_make_one_pool(
    prefect_server: tool_servers.RunningServer, make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    barrier = threading.Barrier(4)

    def provision(_: int) -> str:
        adapter = PrefectAdapter(prefect_server.url)
        barrier.wait()
        return adapter.provision(subject).details["work_pool_id"]

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(provision, range(4)))
    assert len(ids) == 1
    found = httpx.post(
        f"{prefect_server.url}/work_pools/filter",
        json={"work_pools": {"name": {"any_": [work_pool_name(subject.username)]}}},
        timeout=10,
    )
    assert len(found.json()) == 1


def test_deprovision_pauses_reprovision_resumes_drop_deletes(
    adapter: PrefectAdapter,
    prefect_server: tool_servers.RunningServer,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    name = work_pool_name(subject.username)
    assert adapter.status(subject).status == "absent"
    adapter.provision(subject)

    adapter.deprovision(subject)
    assert get_pool(prefect_server, name).json()["is_paused"] is True
    assert adapter.status(subject).status == "disabled"

    assert adapter.provision(subject).status == "ready"
    assert get_pool(prefect_server, name).json()["is_paused"] is False

    adapter.deprovision(subject, drop=True)
    assert get_pool(prefect_server, name).status_code == 404
    assert adapter.status(subject).status == "absent"
    adapter.deprovision(subject, drop=True)  # already gone: no error
    adapter.deprovision(subject)
