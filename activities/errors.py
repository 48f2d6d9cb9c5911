"""Tool failures as Temporal retries them: permanent ones fail the step at once, transient
ones are retried by the workflow's retry policy."""

from temporalio.exceptions import ApplicationError

from core.tools.base import ToolPermanentError, ToolTransientError

TOOL_ERRORS = (ToolPermanentError, ToolTransientError)


def tool_application_error(err: ToolPermanentError | ToolTransientError) -> ApplicationError:
    """The activity's error for an adapter's failure; its type names the workflow's
    non-retryable list (`ToolPermanentError`)."""
    if isinstance(err, ToolPermanentError):
        return ApplicationError(
            str(err) or "permanent tool error", type="ToolPermanentError", non_retryable=True
        )
    return ApplicationError(str(err) or "transient tool error", type="ToolTransientError")
