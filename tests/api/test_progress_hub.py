"""The progress hub without a server: the SQLite poller (one query per interval for every
watched enrollment, a read only for the one that moved) and the stream bounds."""

import asyncio
from pathlib import Path

import pytest

from api.payments.progress import (
    ProgressHub,
    StreamsFull,
    TooManyStreams,
    VersionPoller,
    Watch,
    parse_note,
)
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


async def test_a_notified_step_shows_at_once_without_a_read_and_outlives_a_lagging_one() -> None:
    workflows = FakeWorkflows()
    hub = ProgressHub(workflows.read, settings())
    watch = hub.watch("cs_test_aaaaaaaaaa")
    await asyncio.sleep(0.3)  # the new watch's one read
    assert workflows.reads == ["cs_test_aaaaaaaaaa"]
    assert watch.current is not None and watch.current.state.steps[0].status == "running"
    seen = watch.version

    sid, steps = parse_note(
        'cs_test_aaaaaaaaaa [{"key": "payment", "status": "done", "detail": ""}]'
    )
    assert sid == "cs_test_aaaaaaaaaa" and [s.key for s in steps] == ["payment"]
    hub.changed(sid, steps)
    moved = await watch.next(seen, 0.01)  # published in the same call: no waiting on a read
    assert moved is not None and moved.state.steps[0].status == "done"
    assert len(workflows.reads) == 1
    assert moved.state.steps[0].label == "Payment confirmed"  # the rest is the last read's

    # A read from before the workflow caught up does not take the step back...
    seen = watch.version
    hub.changed("cs_test_aaaaaaaaaa")
    await asyncio.sleep(0.2)
    assert len(workflows.reads) > 1
    assert watch.current.state.steps[0].status == "done" and watch.version == seen
    # ...and once a read shows the step itself, the notified copy is dropped.
    workflows.steps["cs_test_aaaaaaaaaa"] = "done"
    hub.changed("cs_test_aaaaaaaaaa")
    await asyncio.sleep(0.3)
    assert watch.ahead == {} and watch.current.state.steps[0].status == "done"

    assert parse_note("cs_test_aaaaaaaaaa") == ("cs_test_aaaaaaaaaa", [])
    assert parse_note("cs_test_aaaaaaaaaa [not json") == ("cs_test_aaaaaaaaaa", [])
    hub.unwatch(watch)
    await hub.stop()


async def test_streams_opening_together_share_one_first_read() -> None:
    workflows = FakeWorkflows()
    hub = ProgressHub(workflows.read, settings())
    opened = 0

    async def slow_read() -> Verification:
        nonlocal opened
        opened += 1
        await asyncio.sleep(0.05)
        return await workflows.read("cs_test_aaaaaaaaaa")

    watches = [hub.watch("cs_test_aaaaaaaaaa") for _ in range(50)]
    await asyncio.gather(*(hub.opened(w, slow_read) for w in watches))
    assert opened == 1 and all(w.current is not None for w in watches)
    await asyncio.sleep(0.3)  # that read began after the watch existed: no second one
    assert workflows.reads == ["cs_test_aaaaaaaaaa"]
    for w in watches:
        hub.unwatch(w)
    await hub.stop()


async def test_a_notified_step_the_last_read_lacks_makes_the_hub_read_once() -> None:
    """A read from before the workflow listed its tools (a placeholder, or the memo behind a
    timed-out query) cannot show a tool's step: each such notification reads once more."""
    listed = False
    reads = 0

    async def read(session_id: str) -> Verification:
        nonlocal reads
        reads += 1
        state = EnrollmentState(session_id, "", "DP", "ENROLLED")
        state.steps = [Step("payment", "Payment confirmed", "done")]
        if listed:
            state.steps.append(Step("tool:postgres", "PostgreSQL ready", "running"))
            state.steps.append(Step("tool:superset", "Superset ready", "pending"))
        return Verification(state, False)

    hub = ProgressHub(read, settings())
    watch = hub.watch("cs_test_aaaaaaaaaa")
    await asyncio.sleep(0.3)
    assert reads == 1
    hub.changed("cs_test_aaaaaaaaaa", [Step("tool:postgres", "", "done", "")])
    await asyncio.sleep(0.1)
    assert reads == 2 and watch.blind  # read again, still without the step
    listed = True
    hub.changed("cs_test_aaaaaaaaaa", [Step("tool:superset", "", "running", "")])
    await asyncio.sleep(0.1)
    assert reads == 3 and not watch.blind
    assert watch.current is not None
    assert [s.status for s in watch.current.state.steps] == ["done", "done", "running"]
    hub.unwatch(watch)
    await hub.stop()


def test_a_read_without_steps_does_not_blank_what_the_last_read_showed() -> None:
    watch = Watch("cs_test_aaaaaaaaaa")
    full = EnrollmentState("cs_test_aaaaaaaaaa", "", "DP", "ENROLLED")
    full.steps = [Step("payment", "Payment confirmed", "done")]
    assert watch.publish(Verification(full, False))
    # What the memo gives when the query timed out before the workflow wrote its steps.
    empty = EnrollmentState("cs_test_aaaaaaaaaa", "", "", "ENROLLED")
    assert not watch.publish(Verification(empty, False))
    assert watch.current is not None and watch.current.state.steps == full.steps
    assert watch.publish(Verification(empty, True))  # an answer that ends it still counts
