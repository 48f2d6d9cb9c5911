"""EnrollmentWorkflow's history: what it publishes, and that code changes keep old runs
replayable. `histories/` holds runs recorded with earlier workflow code; a change that would
break a run in flight fails here, before it reaches a worker."""

import json
import re
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.converter import PayloadConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from tests.workflows.record_histories import CODE
from tests.workflows.test_enrollment_workflow import StandIns, enrollment, run
from workflows.enrollment import EnrollmentWorkflow

HISTORIES = Path(__file__).parent / "histories"


# Every path of an enrollment's life has a recorded run (tests/workflows/record_histories.py).
PATHS = (
    "enrollment-dp",
    "enrollment-fsd",
    "enrollment-dp-transient-retries",
    "enrollment-dp-retry",
    "enrollment-dp-skip",
    "enrollment-dp-cancel",
    "enrollment-dp-step-retry",
    "enrollment-dp-duplicate",
    # The owner: later events handled by the enrollment's own run.
    "owner-refund",
    "owner-support-revoke",
    "owner-dispute-lost-tool-refused",
    "owner-dispute-won",
    "owner-refund-while-provisioning",
    "owner-started-by-refund",
)
# `<path>-<YYYY-MM-DD>[-<what changed>].json`: the path, then the code that recorded it.
CODE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}(-[a-z-]+)?$")


async def test_runs_recorded_with_earlier_code_still_replay() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    # Every path recorded with today's code; older files replay too (runs still open).
    recorded = {CODE_SUFFIX.sub("", p.stem) for p in files if p.stem.endswith(CODE)}
    assert not set(PATHS) - recorded, f"paths with no recorded run: {set(PATHS) - recorded}"
    replayer = Replayer(workflows=[EnrollmentWorkflow])
    for path in files:
        history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
        # Raises on any nondeterminism: a command the old run did not record, or one missing.
        await replayer.replay_workflow(history)


async def test_each_publish_carries_a_milestone_and_the_last_is_final(
    ts_env: WorkflowEnvironment,
) -> None:
    worker, handle = await run(ts_env, StandIns(), enrollment("DP"))
    async with worker:
        await handle.result()
    history = await handle.fetch_history()
    convert = PayloadConverter.default.from_payload
    attributes, memos = [], []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes
            values = {k: convert(v) for k, v in fields.indexed_fields.items()}
            if "TemporalChangeVersion" not in values:
                attributes.append(values)
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
            memo = e.workflow_properties_modified_event_attributes.upserted_memo.fields
            memos.append({k: convert(v) for k, v in memo.items()})
    assert [a["EnrollmentStatus"] for a in attributes] == ["PAID", "ENROLLED", "READY"]
    assert all(a != b for a, b in zip(memos, memos[1:], strict=False)), "a memo write repeated"
    workflow_tasks = sum(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in history.events
    )
    assert len(memos) <= workflow_tasks  # at most one publish per workflow task
    # The memo moves at milestones only: a status change, or the student able to land.
    assert len(memos) <= len(attributes) + 1, memos
    final = memos[-1]
    assert final["student_ready"] is True
    assert {s["status"] for s in final["progress"]["steps"]} == {"done"}
    await Replayer(workflows=[EnrollmentWorkflow]).replay_workflow(history)
