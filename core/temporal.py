"""Connecting to Temporal, registering the enrollment search attributes, and the UI link."""

import dataclasses
import logging
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import Settings

log = logging.getLogger(__name__)

# Starts, describes and other calls that need no worker.
RPC_TIMEOUT = timedelta(seconds=5)
# Reads that a worker answers (a query, a completed run's result). A query waits for the
# worker (and behind any workflow task the run has in progress); past this the memo answers
# instead. Not shorter: under overload a query given up on is still run and its fallback
# adds load (bench/README.md has the figures).
QUERY_TIMEOUT = timedelta(seconds=2)


class TemporalUnavailable(Exception):
    """Temporal did not take the call; nothing was started, the caller should retry."""


def workflow_url(settings: Settings, workflow_id: str, run_id: str | None = None) -> str:
    """The Temporal Web UI page of a workflow (its run's history when run_id is given)."""
    namespace = settings.temporal_namespace
    url = f"{settings.temporal_ui_url}/namespaces/{namespace}/workflows/{workflow_id}"
    return f"{url}/{run_id}/history" if run_id else url


def interval_schedule(
    workflow: Any,
    arg: Any,
    *,
    schedule_id: str,
    task_queue: str,
    every: timedelta,
    run_timeout: timedelta,
    summary: str,
) -> Schedule:
    """A worker-owned Schedule that starts `workflow(arg)` every `every`; a slow run is never
    doubled up (the next tick finds the rest)."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            workflow,
            arg,
            id=f"{schedule_id}-run",
            task_queue=task_queue,
            execution_timeout=run_timeout,
            static_summary=summary,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note="created by the Onramp worker at boot"),
    )


async def ensure_schedule(client: Client, schedule_id: str, schedule: Schedule) -> None:
    """Create the Schedule, or bring an existing one to this spec (its pause state kept)."""
    try:
        await client.create_schedule(schedule_id, schedule)
        log.info("created schedule %s", schedule_id)
        return
    except ScheduleAlreadyRunningError:
        pass

    def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(
            schedule=dataclasses.replace(schedule, state=current.description.schedule.state)
        )

    await client.get_schedule_handle(schedule_id).update(keep_state)
    log.info("updated schedule %s", schedule_id)


_TYPES = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


async def connect(settings: Settings, lazy: bool = False) -> Client:
    return await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, lazy=lazy
    )


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Idempotent: attributes that already exist are left as they are."""
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={k: _TYPES[v] for k, v in SEARCH_ATTRIBUTES.items()},
            )
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
