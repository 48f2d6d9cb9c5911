"""Deterministic orchestration: workflow definitions only, no I/O."""

from workflows.enrollment import EnrollmentWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.revoke import RevokeWorkflow

WORKFLOWS = [EnrollmentWorkflow, RevokeWorkflow, ReconcileWorkflow]
