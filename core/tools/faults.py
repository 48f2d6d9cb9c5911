"""Fault injection for workflow-level tests: make a tool fail on purpose (never in production).

`ONRAMP_TOOL_FAULTS` holds JSON such as
`{"superset": {"transient": 2}, "prefect": {"permanent": true}}`: the first N provision
calls per (tool, student) raise `ToolTransientError`, or every call raises
`ToolPermanentError`. Counts live in files under `ONRAMP_TOOL_FAULTS_DIR`, so they survive
a worker restart (a test that kills the worker mid-retry still sees the right attempt).
"""

import fcntl
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolAdapter,
    ToolPermanentError,
    ToolSubject,
    ToolTransientError,
    no_progress,
)

logger = logging.getLogger(__name__)

FAULTS_ENV = "ONRAMP_TOOL_FAULTS"
FAULTS_DIR_ENV = "ONRAMP_TOOL_FAULTS_DIR"


@dataclass(frozen=True)
class FaultPlan:
    transient: int = 0
    permanent: bool = False


def parse_fault_plans(raw: str) -> dict[str, FaultPlan]:
    """Parse the env JSON; a malformed value is a test bug, so fail loudly."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{FAULTS_ENV} must be a JSON object of tool -> plan")
    plans = {}
    for tool, plan in data.items():
        if not isinstance(plan, dict):
            raise ValueError(f"{FAULTS_ENV}[{tool!r}] must be an object")
        plans[tool] = FaultPlan(
            transient=int(plan.get("transient", 0)), permanent=bool(plan.get("permanent", False))
        )
    return plans


def default_faults_dir() -> Path:
    return Path(os.environ.get(FAULTS_DIR_ENV) or Path(tempfile.gettempdir(), "onramp-tool-faults"))


class FaultInjectingAdapter:
    """Wraps an adapter; provision fails as planned, everything else passes through."""

    def __init__(self, inner: ToolAdapter, plan: FaultPlan, state_dir: Path | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.development = inner.development
        self._plan = plan
        self._dir = state_dir or default_faults_dir()

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        if self._plan.permanent:
            raise ToolPermanentError(f"{self.name}: injected permanent fault")
        if self._plan.transient > 0:
            attempt = self._next_attempt(subject)
            if attempt <= self._plan.transient:
                logger.info(
                    "%s: injected transient fault %d/%d", self.name, attempt, self._plan.transient
                )
                raise ToolTransientError(
                    f"{self.name}: injected transient fault {attempt}/{self._plan.transient}"
                )
        return self.inner.provision(subject, progress)

    def status(self, subject: ToolSubject) -> ToolAccount:
        return self.inner.status(subject)

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        self.inner.deprovision(subject, drop)

    def holders(self) -> list[Held]:
        return self.inner.holders()

    def attempts(self, subject: ToolSubject) -> int:
        """Provision calls counted so far for this student (tests assert on it)."""
        path = self._counter_path(subject)
        return int(path.read_text() or 0) if path.exists() else 0

    def _counter_path(self, subject: ToolSubject) -> Path:
        return self._dir / f"{self.name}-{subject.username}.count"

    def _next_attempt(self, subject: ToolSubject) -> int:
        """Increment the counter under an exclusive lock: workers may run in parallel."""
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._counter_path(subject)
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            count = int(handle.read().strip() or 0) + 1
            handle.seek(0)
            handle.truncate()
            handle.write(str(count))
            handle.flush()
        return count
