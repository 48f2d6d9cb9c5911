"""The progress hub without a server: the SQLite poller (one query per interval for every
watched enrollment, a read only for the one that moved) and the stream bounds."""

import asyncio
from pathlib import Path

import pytest

from api.payments.progress import ProgressHub, StreamsFull, TooManyStreams, VersionPoller
from api.payments.verify import Verification
from core import repository as repo
from core.contracts import EnrollmentState, Step
from core.db import make_engine, session_scope
from core.models import Enrollment
from core.settings import Settings
from tests.utils.helpers import migrate


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, app_env="test", **overrides)  # type: ignore[arg-type]


class FakeWorkflows:
    """What each enrollment's workflow would answer, and how often it was asked."""

    def __init__(self) -> None:
        self.steps: dict[str, str] = {}
        self.reads: list[str] = []

    async def read(self, session_id: str) -> Verification:
        self.reads.append(session_id)
        state = EnrollmentState(session_id, "", "DP", "PAID")
        state.steps = [Step("payment", "Payment confirmed", self.steps.get(session_id, "running"))]
        return Verification(state, False)


async def test_sqlite_poller_reads_only_the_enrollment_that_moved(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'onramp.db'}"
    await asyncio.to_thread(migrate, url)
    engine = make_engine(url)
    ids = {}
    with session_scope(engine) as s:
        for sid in ("cs_test_aaaaaaaaaa", "cs_test_bbbbbbbbbb"):
            e = Enrollment(
                checkout_session_id=sid, workflow_id=f"enrollment-{sid}", email="a@example.com",
                name="A", track="DP",
            )  # fmt: skip
            s.add(e)
            s.flush()
            ids[sid] = e.id
    workflows = FakeWorkflows()
    poller = VersionPoller(engine, 0.25)
    hub = ProgressHub(workflows.read, settings(), poller)
    a, b = hub.watch("cs_test_aaaaaaaaaa"), hub.watch("cs_test_bbbbbbbbbb")
    await asyncio.sleep(0.5)  # each new watch reads (and settles) once
    assert set(workflows.reads) == {"cs_test_aaaaaaaaaa", "cs_test_bbbbbbbbbb"}
    settled = len(workflows.reads)
    await poller.poll(hub)  # the versions as they are now
    await poller.poll(hub)
    assert len(workflows.reads) == settled and poller.queries == 2

    workflows.steps["cs_test_aaaaaaaaaa"] = "done"
    with session_scope(engine) as s:
        repo.bump_progress(s, ids["cs_test_aaaaaaaaaa"])
    seen = a.current.version if a.current else None
    await poller.poll(hub)
    moved = await a.next(seen, 2.0)
    assert moved is not None and moved.state.steps[0].status == "done"
    await asyncio.sleep(0.2)
    assert "cs_test_bbbbbbbbbb" not in workflows.reads[settled:]  # b did not move: not read
    assert poller.queries == 3  # one query per interval, for both watched enrollments
    hub.unwatch(a)
    hub.unwatch(b)
    assert hub.watched() == []
    await hub.stop()
    engine.dispose()


def test_stream_bounds_per_address_and_in_total() -> None:
    hub = ProgressHub(FakeWorkflows().read, settings(
        progress_streams_per_client=2, progress_streams_max=3
    ))  # fmt: skip
    first = [hub.reserve("198.51.100.1") for _ in range(2)]
    with pytest.raises(TooManyStreams) as per_address:
        hub.reserve("198.51.100.1")
    assert per_address.value.status_code == 429
    hub.reserve("198.51.100.2")
    with pytest.raises(StreamsFull) as total:
        hub.reserve("198.51.100.3")
    assert total.value.status_code == 503
    first[0].release()
    first[0].release()  # releasing twice gives back one slot only
    assert hub.open == 2
    hub.reserve("198.51.100.3")
