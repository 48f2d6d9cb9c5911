"""Development stand-in for a tool whose server is not configured: in-process, clearly labelled.

It provisions nothing real. Its accounts say `development=True` and carry a note, and
`Settings.check_production` refuses to start production while any tool uses it. State is a
process-local dict, so status and deprovision agree with provision within one worker.
"""

import logging
import secrets
import threading
import time

from core.tools.base import Held, Progress, ToolAccount, ToolStatus, ToolSubject, no_progress

logger = logging.getLogger(__name__)

# (tool, username) -> (status, secret); shared by every instance in the process.
_STATE: dict[tuple[str, str], tuple[ToolStatus, str]] = {}
_LOCK = threading.Lock()
HEARTBEAT_EVERY_S = 10.0


def reset_development_state() -> None:
    """Forget every stand-in account (tests)."""
    with _LOCK:
        _STATE.clear()


class DevelopmentToolAdapter:
    development = True

    def __init__(
        self, tool: str, latency_ms: int = 0, base_url: str = "http://127.0.0.1:8000"
    ) -> None:
        self.name = tool
        self._latency_s = max(latency_ms, 0) / 1000
        self._base_url = base_url.rstrip("/")

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        # Stands for the real server's round trips; a long wait reports progress as the real
        # adapters do, or the activity's heartbeat timeout would end it.
        deadline = time.monotonic() + self._latency_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, HEARTBEAT_EVERY_S))
            if deadline - time.monotonic() > 0:
                progress("development stand-in: waiting")
        key = (self.name, subject.username)
        with _LOCK:
            _, secret = _STATE.get(key, (ToolStatus.ABSENT, secrets.token_urlsafe(18)))
            _STATE[key] = (ToolStatus.READY, secret)
        logger.info("dev-tools: %s stand-in provisioned for %s", self.name, subject.username)
        return self._account(subject, ToolStatus.READY, secret)

    def status(self, subject: ToolSubject) -> ToolAccount:
        with _LOCK:
            status, _ = _STATE.get((self.name, subject.username), (ToolStatus.ABSENT, ""))
        if status == ToolStatus.ABSENT:
            return ToolAccount(tool=self.name, status=ToolStatus.ABSENT, development=True)
        return self._account(subject, status, None)

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        key = (self.name, subject.username)
        with _LOCK:
            if drop:
                _STATE.pop(key, None)
            elif key in _STATE:
                _STATE[key] = (ToolStatus.DISABLED, _STATE[key][1])

    def holders(self) -> list[Held]:
        """What this stand-in holds in this process (its whole state is the in-memory dict)."""
        with _LOCK:
            return sorted(
                Held(username, status, username)
                for (tool, username), (status, _) in _STATE.items()
                if tool == self.name
            )

    def _account(self, subject: ToolSubject, status: ToolStatus, secret: str | None) -> ToolAccount:
        return ToolAccount(
            tool=self.name,
            status=status,
            url=f"{self._base_url}/dev-tools/{self.name}/{subject.username}",
            username=subject.username,
            secret=secret,
            details={"note": f"development stand-in: no real {self.name} server configured"},
            development=True,
        )
