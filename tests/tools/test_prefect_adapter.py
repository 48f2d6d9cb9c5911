"""PrefectAdapter against a real Prefect server started for the session, protected by an
auth string as in production."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tool_servers

from core.tools.base import ToolPermanentError, ToolSubject
from core.tools.prefect import PrefectAdapter, authorization, work_pool_name

pytestmark = pytest.mark.prefect


@pytest.fixture
def adapter(prefect_server: tool_servers.RunningServer) -> PrefectAdapter:
    return PrefectAdapter(prefect_server.url, auth_string=prefect_server.auth_string)


def admin(server: tool_servers.RunningServer) -> httpx.Client:
    """Reads the server's state independently of the adapter, with the same credentials."""
    return httpx.Client(base_url=server.url, headers=authorization(server.auth_string), timeout=10)


def get_pool(server: tool_servers.RunningServer, name: str) -> httpx.Response:
    with admin(server) as client:
        return client.get(f"/work_pools/{name}")


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
    with admin(prefect_server) as client:
        queue = client.get(f"/work_pools/{name}/queues/default")
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
        adapter = PrefectAdapter(prefect_server.url, auth_string=prefect_server.auth_string)
        barrier.wait()
        return adapter.provision(subject).details["work_pool_id"]

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(provision, range(4)))
    assert len(ids) == 1
    with admin(prefect_server) as client:
        found = client.post(
            "/work_pools/filter",
            json={"work_pools": {"name": {"any_": [work_pool_name(subject.username)]}}},
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


def test_the_server_refuses_anyone_without_the_auth_string(
    prefect_server: tool_servers.RunningServer, make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    name = work_pool_name(subject.username)
    anonymous = httpx.post(
        f"{prefect_server.url}/work_pools/", json={"name": name, "type": "process"}, timeout=10
    )
    assert anonymous.status_code == 401
    wrong = PrefectAdapter(prefect_server.url, auth_string="onramp:not-the-secret")
    for adapter in (PrefectAdapter(prefect_server.url), wrong):
        with pytest.raises(ToolPermanentError, match="401"):
            adapter.provision(subject)
    assert get_pool(prefect_server, name).status_code == 404  # nothing was created
