"""DockerWorkspaceAdapter against Podman's Docker API, with a tiny local busybox image."""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors
import httpx
import pytest

from core.tools.base import (
    ToolPermanentError,
    ToolSubject,
    ToolTransientError,
)
from core.tools.workspace import DockerWorkspaceAdapter, WorkspaceSpec, workspace_name

pytestmark = pytest.mark.podman

# The test image differs from Jupyter/code-server only by this configuration.
HTTPD = ("/bin/busybox", "httpd", "-f", "-p", "{port}", "-h", "/www")
SPEC = WorkspaceSpec(
    internal_port=8080,
    health_path="/index.html",
    token_env="WORKSPACE_TOKEN",
    volume_path="/data",
    command=HTTPD,
)
MEMORY = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def engine(docker_url: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_url)
    yield client
    client.close()


@pytest.fixture
def make_adapter(
    docker_url: str, test_image: str, engine: docker.DockerClient, run_id: str
) -> Iterator[Callable[..., DockerWorkspaceAdapter]]:
    def make(spec: WorkspaceSpec = SPEC, **options: object) -> DockerWorkspaceAdapter:
        settings: dict[str, object] = {
            "spec": spec,
            "memory": "64m",
            "cpus": 0.5,
            "pids_limit": 64,
            "health_timeout_s": 20.0,
            "probe_interval_s": 0.2,
            "stop_timeout_s": 1,
        }
        settings.update(options)
        return DockerWorkspaceAdapter(
            "jupyter",
            lambda: docker.DockerClient(base_url=docker_url),
            test_image,
            "127.0.0.1",
            **settings,  # type: ignore[arg-type]
        )

    yield make
    # Remove whatever this session's tests left, whatever the adapter's state.
    mine = f"t{run_id}_"
    for container in engine.containers.list(all=True, filters={"label": "onramp.tool"}):
        if container.labels.get("onramp.student", "").startswith(mine):
            container.remove(force=True)
    for volume in engine.volumes.list():
        if volume.name.startswith(f"onramp-jupyter-{mine}"):
            volume.remove(force=True)


def inspect(engine: docker.DockerClient, subject: ToolSubject) -> dict:
    return engine.api.inspect_container(workspace_name("jupyter", subject.username))


def test_provision_runs_a_limited_labelled_container_and_waits_for_health(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    account = make_adapter().provision(subject)

    assert account.status == "ready" and account.development is False
    assert httpx.get(account.url + "index.html", timeout=5).status_code == 200
    info = inspect(engine, subject)
    labels = info["Config"]["Labels"]
    assert labels["onramp.student"] == subject.username
    assert labels["onramp.tool"] == "jupyter"
    assert labels["onramp.enrollment"] == subject.enrollment_id
    host = info["HostConfig"]
    assert host["Memory"] == MEMORY
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["Privileged"] is False
    # Docker echoes ["ALL"]; Podman expands it to every default capability.
    assert "ALL" in host["CapDrop"] or {"CHOWN", "SETUID", "NET_RAW"} <= set(host["CapDrop"])
    assert not host.get("CapAdd")
    assert any("no-new-privileges" in opt for opt in host.get("SecurityOpt") or [])
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/data"]["Name"] == workspace_name("jupyter", subject.username)
    assert f"WORKSPACE_TOKEN={account.secret}" in info["Config"]["Env"]
    assert account.secret and account.secret not in account.url


def test_provision_twice_returns_the_same_container_and_secret(
    make_adapter: Callable[..., DockerWorkspaceAdapter], make_subject: Callable[..., ToolSubject]
) -> None:
    subject = make_subject()
    first = make_adapter().provision(subject)
    second = make_adapter().provision(subject)  # a new adapter: nothing cached in memory
    assert first.details["container_id"] == second.details["container_id"]
    assert first.secret == second.secret
    assert first.url == second.url


def test_name_conflict_on_create_is_success(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    first = make_adapter().provision(subject)

    class StaleLookup(DockerWorkspaceAdapter):
        """Misses the container once, as a concurrent provision would: create then conflicts."""

        missed = False

        def _find(self, client, name):  # type: ignore[no-untyped-def]
            if not self.missed:
                self.missed = True
                return None
            return super()._find(client, name)

    adapter = make_adapter()
    adapter.__class__ = StaleLookup
    second = adapter.provision(subject)
    assert second.details["container_id"] == first.details["container_id"]
    assert second.secret == first.secret
    assert len(engine.containers.list(all=True, filters={"name": first.details["container"]})) == 1


def test_concurrent_provisions_share_one_container(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    barrier = threading.Barrier(3)

    def provision(_: int) -> tuple[str, str | None]:
        adapter = make_adapter()
        barrier.wait()
        account = adapter.provision(subject)
        return account.details["container_id"], account.secret

    with ThreadPoolExecutor(3) as pool:
        results = set(pool.map(provision, range(3)))
    assert len(results) == 1
    name = workspace_name("jupyter", subject.username)
    assert len(engine.containers.list(all=True, filters={"name": name})) == 1


def test_a_stopped_container_is_started_and_work_survives(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    adapter = make_adapter()
    first = adapter.provision(subject)
    container = engine.containers.get(first.details["container_id"])
    container.exec_run(["/bin/sh", "-c", "echo kept > /data/notes.txt"])

    adapter.deprovision(subject)
    assert engine.containers.get(first.details["container_id"]).status == "exited"
    assert adapter.status(subject).status == "disabled"

    again = adapter.provision(subject)
    assert again.details["container_id"] == first.details["container_id"]
    assert again.secret == first.secret
    assert adapter.status(subject).status == "ready"
    result = engine.containers.get(again.details["container_id"]).exec_run(
        ["/bin/busybox", "cat", "/data/notes.txt"]
    )
    assert result.output == b"kept\n"


def test_drop_removes_container_and_volume(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    adapter = make_adapter()
    adapter.provision(subject)
    adapter.deprovision(subject, drop=True)
    name = workspace_name("jupyter", subject.username)
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(name)
    with pytest.raises(docker.errors.NotFound):
        engine.volumes.get(name)
    assert adapter.status(subject).status == "absent"
    adapter.deprovision(subject, drop=True)


def test_health_wait_reports_progress_until_the_server_answers(
    make_adapter: Callable[..., DockerWorkspaceAdapter], make_subject: Callable[..., ToolSubject]
) -> None:
    slow = WorkspaceSpec(
        internal_port=8080,
        health_path="/index.html",
        token_env="WORKSPACE_TOKEN",
        volume_path="/data",
        command=("/bin/sh", "-c", "sleep 2; exec " + " ".join(HTTPD)),
    )
    messages: list[str] = []
    account = make_adapter(slow).provision(make_subject(), progress=messages.append)
    assert account.status == "ready"
    waiting = [m for m in messages if "waiting" in m]
    assert len(waiting) >= 3  # about 2 s at 0.2 s per probe


def test_a_container_that_exits_is_permanent(
    make_adapter: Callable[..., DockerWorkspaceAdapter], make_subject: Callable[..., ToolSubject]
) -> None:
    broken = WorkspaceSpec(
        internal_port=8080,
        health_path="/",
        token_env="WORKSPACE_TOKEN",
        volume_path="/data",
        command=("/bin/sh", "-c", "exit 3"),
    )
    with pytest.raises(ToolPermanentError, match="exited"):
        make_adapter(broken).provision(make_subject())


def test_a_server_that_never_answers_times_out_as_transient(
    make_adapter: Callable[..., DockerWorkspaceAdapter], make_subject: Callable[..., ToolSubject]
) -> None:
    silent = WorkspaceSpec(
        internal_port=8080,
        health_path="/",
        token_env="WORKSPACE_TOKEN",
        volume_path="/data",
        command=("/bin/sh", "-c", "sleep 60"),
    )
    with pytest.raises(ToolTransientError):
        make_adapter(silent, health_timeout_s=1.5).provision(make_subject())


def test_host_networking_listens_on_the_chosen_port(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    account = make_adapter(network="host").provision(subject)
    assert inspect(engine, subject)["HostConfig"]["NetworkMode"] == "host"
    assert httpx.get(account.url + "index.html", timeout=5).status_code == 200


def test_a_foreign_container_with_the_name_is_refused(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    test_image: str,
    make_subject: Callable[..., ToolSubject],
) -> None:
    subject = make_subject()
    foreign = engine.containers.create(
        test_image, name=workspace_name("jupyter", subject.username), labels={"onramp.tool": "x"}
    )
    try:
        with pytest.raises(ToolPermanentError):
            make_adapter().provision(subject)
    finally:
        foreign.remove(force=True)


def test_an_image_that_cannot_be_pulled_is_transient(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    docker_url: str,
    make_subject: Callable[..., ToolSubject],
) -> None:
    adapter = DockerWorkspaceAdapter(
        "jupyter",
        lambda: docker.DockerClient(base_url=docker_url),
        "localhost/onramp-no-such-image:0",
        spec=SPEC,
    )
    with pytest.raises(ToolTransientError, match="pulling"):
        adapter.provision(make_subject())


def test_unreachable_engine_is_transient(make_subject: Callable[..., ToolSubject]) -> None:
    adapter = DockerWorkspaceAdapter(
        "jupyter",
        lambda: docker.DockerClient(base_url="unix:///run/onramp-no-such.sock"),
        "localhost/x:1",
        spec=SPEC,
    )
    with pytest.raises(ToolTransientError):
        adapter.provision(make_subject())


def test_holders_are_the_labelled_workspaces_under_their_own_names(
    make_adapter: Callable[..., DockerWorkspaceAdapter],
    engine: docker.DockerClient,
    test_image: str,
    make_subject: Callable[..., ToolSubject],
    run_id: str,
) -> None:
    adapter = make_adapter()
    running, stopped, other = make_subject("run"), make_subject("stop"), make_subject("other")
    adapter.provision(running)
    adapter.provision(stopped)
    adapter.deprovision(stopped)
    # Labelled as a workspace of `other`, but not under its name: not ours to act on.
    engine.containers.create(
        test_image,
        command=["/bin/busybox", "sleep", "60"],
        name=f"t{run_id}-impostor",
        labels={"onramp.tool": "jupyter", "onramp.student": other.username},
    )

    mine = [h for h in adapter.holders() if h.username.startswith(f"t{run_id}_")]
    assert [(h.username, h.status, h.name) for h in mine] == [
        (running.username, "ready", workspace_name("jupyter", running.username)),
        (stopped.username, "disabled", workspace_name("jupyter", stopped.username)),
    ]
