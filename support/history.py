"""A workflow's history condensed for people: one readable line per event support cares about."""

import json
from datetime import UTC
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import PayloadConverter

_PAYLOADS = PayloadConverter.default


def _payload_text(payloads: Any) -> str:
    values = []
    for payload in payloads:
        try:
            values.append(_PAYLOADS.from_payload(payload))
        except Exception:  # noqa: BLE001 (an encoding we do not know: show its size)
            values.append(f"<{len(payload.data)} bytes>")
    return json.dumps(values, default=str)[:300]


def _summary(event: HistoryEvent) -> str:
    if event.HasField("user_metadata") and event.user_metadata.HasField("summary"):
        try:
            return str(_PAYLOADS.from_payload(event.user_metadata.summary))
        except Exception:  # noqa: BLE001
            return ""
    return ""


def history_line(event: HistoryEvent, scheduled: dict[int, str]) -> dict[str, Any] | None:
    """One readable line per event that matters to support; None for the rest."""
    t = event.event_type
    at = event.event_time.ToDatetime(tzinfo=UTC).isoformat()
    if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        scheduled_attrs = event.activity_task_scheduled_event_attributes
        summary = _summary(event)
        scheduled[event.event_id] = scheduled_attrs.activity_type.name + (
            f" ({summary})" if summary else ""
        )
        return None
    if t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
        name = scheduled.get(event.activity_task_completed_event_attributes.scheduled_event_id)
        return {"at": at, "event": "activity completed", "detail": name}
    if t == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
        failed = event.activity_task_failed_event_attributes
        failure = failed.failure.cause.message or failed.failure.message
        return {
            "at": at,
            "event": "activity failed",
            "detail": f"{scheduled.get(failed.scheduled_event_id)}: {failure}",
        }
    if t == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
        timed_out = event.activity_task_timed_out_event_attributes
        return {
            "at": at,
            "event": "activity timed out",
            "detail": f"{scheduled.get(timed_out.scheduled_event_id)}: {timed_out.failure.message}",
        }
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        return {"at": at, "event": "workflow started", "detail": _summary(event)}
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        req = event.workflow_execution_update_accepted_event_attributes.accepted_request
        return {
            "at": at,
            "event": f"update {req.input.name}",
            "detail": _payload_text(req.input.args.payloads),
        }
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
        signal = event.workflow_execution_signaled_event_attributes
        return {"at": at, "event": f"signal {signal.signal_name}", "detail": ""}
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
        return {"at": at, "event": "workflow completed", "detail": ""}
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
        wf_failure = event.workflow_execution_failed_event_attributes.failure
        return {"at": at, "event": "workflow failed", "detail": wf_failure.message}
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
        terminated = event.workflow_execution_terminated_event_attributes
        return {"at": at, "event": "workflow terminated", "detail": terminated.reason}
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
        return {"at": at, "event": "workflow timed out", "detail": ""}
    if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
        return {"at": at, "event": "workflow cancelled", "detail": ""}
    return None
