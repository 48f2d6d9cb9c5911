"""Prefect adapter: each student gets an own `process` work pool on the Prefect server.

Found-or-created by name (`student_<username>`): a 409 from the create means it exists. The
server makes the pool's `default` work queue itself. Deprovisioning pauses the pool, so a
running worker stops picking up flow runs; `drop=True` deletes it.

A self-hosted Prefect 3 server is protected by PREFECT_SERVER_API_AUTH_STRING ("user:pass"):
its clients send it as HTTP Basic credentials, as `prefect` itself does with
PREFECT_API_AUTH_STRING. Without it anyone reaching the server controls every pool.
"""

import base64
import logging
from typing import Any
from urllib.parse import quote

import httpx

from core.contracts import ToolStatus
from core.tools._http import json_of, request
from core.tools.base import (
    Held,
    Progress,
    ToolAccount,
    ToolSubject,
    ToolTransientError,
    no_progress,
)
from core.tracks import TOOL_PREFECT

logger = logging.getLogger(__name__)

WORK_POOL_TYPE = "process"
DEFAULT_QUEUE = "default"
POOL_PREFIX = "student_"
PAGE = 200  # the server's default PREFECT_API_DEFAULT_LIMIT: larger pages answer 422


def work_pool_name(username: str) -> str:
    return f"{POOL_PREFIX}{username}"


def authorization(auth_string: str | None, api_key: str | None = None) -> dict[str, str]:
    """The Authorization header for a self-hosted server's auth string (HTTP Basic, what
    Prefect's own client sends) or a Prefect Cloud API key (Bearer); none without either."""
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


class PrefectAdapter:
    """Talks to a Prefect 3 server's REST API (`api_url` ends in `/api`)."""

    name = TOOL_PREFECT
    development = False

    def __init__(
        self,
        api_url: str,
        api_key: str | None = None,
        timeout_s: float = 15.0,
        ui_url: str | None = None,
        auth_string: str | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        base = self._api_url.removesuffix("/api")
        self._ui_url = (ui_url or base).rstrip("/")
        self._headers = authorization(auth_string, api_key)
        self._timeout = timeout_s

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self._api_url, headers=self._headers, timeout=self._timeout)

    def provision(self, subject: ToolSubject, progress: Progress = no_progress) -> ToolAccount:
        name = work_pool_name(subject.username)
        with self._client() as client:
            created = request(
                client,
                self.name,
                "POST",
                "/work_pools/",
                ok=(200, 201, 409),
                json={
                    "name": name,
                    "type": WORK_POOL_TYPE,
                    "description": f"Onramp work pool of {subject.username}",
                },
            )
            pool = self._get(client, name)
            if pool is None:
                # Deleted between our create and our read (a concurrent drop): try again.
                raise ToolTransientError("prefect: work pool vanished right after creation")
            if pool.get("is_paused") or pool.get("status") == "PAUSED":
                # A re-provision after a deprovision re-opens the pool.
                request(
                    client,
                    self.name,
                    "PATCH",
                    f"/work_pools/{quote(name, safe='')}",
                    json={"is_paused": False},
                )
                pool = self._get(client, name) or pool
        logger.info(
            "prefect: work pool %s %s",
            name,
            "created" if created.status_code != 409 else "already existed",
        )
        return self._account(name, pool)

    def status(self, subject: ToolSubject) -> ToolAccount:
        name = work_pool_name(subject.username)
        with self._client() as client:
            pool = self._get(client, name)
        if pool is None:
            return ToolAccount(tool=self.name, status=ToolStatus.ABSENT)
        return self._account(name, pool)

    def deprovision(self, subject: ToolSubject, drop: bool = False) -> None:
        name = work_pool_name(subject.username)
        path = f"/work_pools/{quote(name, safe='')}"
        with self._client() as client:
            if drop:
                request(client, self.name, "DELETE", path, ok=(200, 204, 404))
            else:
                request(
                    client, self.name, "PATCH", path, ok=(200, 204, 404), json={"is_paused": True}
                )
        logger.info("prefect: work pool %s %s", name, "deleted" if drop else "paused")

    def holders(self) -> list[Held]:
        """Every `process` pool named `student_<username>` (paused ones as disabled)."""
        held = []
        with self._client() as client:
            offset = 0
            while True:
                response = request(
                    client,
                    self.name,
                    "POST",
                    "/work_pools/filter",
                    ok=(200,),
                    json={"offset": offset, "limit": PAGE},
                )
                pools = json_of(self.name, response)
                if not isinstance(pools, list):
                    raise ToolTransientError("prefect: listing work pools answered no list")
                for pool in pools:
                    name = str(pool.get("name") or "")
                    if not name.startswith(POOL_PREFIX) or pool.get("type") != WORK_POOL_TYPE:
                        continue
                    paused = bool(pool.get("is_paused")) or pool.get("status") == "PAUSED"
                    held.append(
                        Held(
                            name[len(POOL_PREFIX) :],
                            ToolStatus.DISABLED if paused else ToolStatus.READY,
                            name,
                        )
                    )
                if len(pools) < PAGE:
                    return sorted(held)
                offset += len(pools)

    def _get(self, client: httpx.Client, name: str) -> dict[str, Any] | None:
        response = request(
            client, self.name, "GET", f"/work_pools/{quote(name, safe='')}", ok=(200, 404)
        )
        if response.status_code == 404:
            return None
        pool: dict[str, Any] = json_of(self.name, response)
        return pool

    def _account(self, name: str, pool: dict[str, Any]) -> ToolAccount:
        paused = bool(pool.get("is_paused")) or pool.get("status") == "PAUSED"
        return ToolAccount(
            tool=self.name,
            status=ToolStatus.DISABLED if paused else ToolStatus.READY,
            url=f"{self._ui_url}/work-pools/work-pool/{quote(name, safe='')}",
            username=name,
            details={
                "work_pool": name,
                "work_pool_id": str(pool.get("id", "")),
                "work_queue": DEFAULT_QUEUE,
                "type": str(pool.get("type", WORK_POOL_TYPE)),
            },
        )
