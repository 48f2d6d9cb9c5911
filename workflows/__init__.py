"""Deterministic orchestration: workflow definitions only, no I/O.

`WORKFLOWS` is loaded on first use, not at package import: Temporal's sandbox re-imports
a workflow's module (and so this package) for every workflow run, and eager imports here
would make each enrollment re-import the reconcile and access-drift workflows too.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WORKFLOWS":
        from workflows.access_drift import AccessDriftWorkflow
        from workflows.enrollment import EnrollmentWorkflow
        from workflows.reconcile import ReconcileWorkflow

        return [EnrollmentWorkflow, ReconcileWorkflow, AccessDriftWorkflow]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
