"""Deterministic orchestration: workflow definitions only, no I/O."""

from workflows.enrollment import EnrollmentWorkflow

WORKFLOWS = [EnrollmentWorkflow]
