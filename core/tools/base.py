"""The one interface every tool adapter implements: provision, status, deprovision, holders.

Adapters are synchronous (they call psycopg, httpx and the docker SDK) and run in the
worker's activity thread pool. Every method is idempotent and safe to run concurrently
for the same student: provisioning twice finds what the first call made.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from core.contracts import ToolStatus

__all__ = ["ToolStatus"]


@dataclass(frozen=True)
class ToolSubject:
    """Who a tool is provisioned for. Names derived from `username` must be stable."""

    user_id: int
    username: str  # unique, [a-z0-9_], at most 40 characters, starts with a letter
    email: str
    name: str
    enrollment_id: str  # the Checkout Session id


@dataclass
class ToolAccount:
    """What a student gets from one tool; `secret` is stored encrypted, never logged."""

    tool: str
    status: ToolStatus
    url: str = ""
    username: str | None = None
    secret: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    development: bool = False  # True for a development stand-in, shown as such


@dataclass(frozen=True, order=True)
class Held:
    """One student's account as the tool itself holds it (listed by `holders`).

    `username` is Onramp's username (mapped back from the tool's object name); `status` is
    "ready" while the account gives access, "disabled" when it exists without access.
    """

    username: str
    status: ToolStatus
    name: str = ""  # the tool's own object name (role, pool, container, folder)


class ToolError(Exception):
    """Base of tool failures; never carries secrets in its message."""


class ToolTransientError(ToolError):
    """Connection refused, 5xx, timeouts: retried with backoff."""


class ToolPermanentError(ToolError):
    """Bad configuration or a 4xx that will not change: fails fast, surfaced to support."""


# Called by long operations (a health wait) so the activity can heartbeat.
Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    return None


class ToolAdapter(Protocol):
    name: str
    development: bool

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount: ...

    def status(self, subject: ToolSubject) -> ToolAccount: ...

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None: ...

    def holders(self) -> list[Held]:
        """Every account of this tool that Onramp manages (by its naming, labels or marker
        role), whoever it belongs to; never anything Onramp did not create. Read-only."""
        ...
